mod entities;
use entities::*;


// A relation the attribute block does not declare does not exist.
async fn run(db: &sea_orm::DatabaseConnection, a: &article::Model, tags: &[tag::Model]) {
    thorn::seaorm::link(db, a, article::Model::TAG, tags).await.unwrap();
}

fn main() {}

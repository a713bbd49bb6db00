mod entities;
use entities::*;


// A relation belongs to its model.
async fn run(db: &sea_orm::DatabaseConnection, a: &article::Model, tags: &[tag::Model]) {
    thorn::seaorm::link(db, a, tag::Model::LABELS, tags).await.unwrap();
}

fn main() {}

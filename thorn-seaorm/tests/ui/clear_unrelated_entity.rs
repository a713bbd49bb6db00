mod entities;
use entities::*;


// Clearing names the related entity, which must be `Related` too.
async fn run(db: &sea_orm::DatabaseConnection, a: &article::Model) {
    thorn::seaorm::clear(db, a, article::Model::TAGS, author::Entity).await.unwrap();
}

fn main() {}

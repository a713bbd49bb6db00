mod entities;
use entities::*;


// Linking needs SeaORM's `Related` from the model's entity to the other.
async fn run(db: &sea_orm::DatabaseConnection, a: &article::Model, authors: &[author::Model]) {
    thorn::seaorm::link(db, a, article::Model::TAGS, authors).await.unwrap();
}

fn main() {}

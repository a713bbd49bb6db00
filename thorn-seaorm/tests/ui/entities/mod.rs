//! The entities the compile-fail cases share: articles <-> tags through
//! article_tags, and authors, which are not related to articles.

pub mod article {
    use sea_orm::entity::prelude::*;
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, thorn::WebhookModel)]
    #[sea_orm(table_name = "articles")]
    #[webhook_model(on_tagged(name = "article.tagged", dispatches_on = m2m_add(tags)))]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
    }
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
    impl Related<super::tag::Entity> for Entity {
        fn to() -> RelationDef {
            super::article_tag::Relation::Tag.def()
        }
        fn via() -> Option<RelationDef> {
            Some(super::article_tag::Relation::Article.def().rev())
        }
    }
    thorn::seaorm::behavior!(ActiveModel);
}

pub mod tag {
    use sea_orm::entity::prelude::*;
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, thorn::WebhookModel)]
    #[sea_orm(table_name = "tags")]
    #[webhook_model(on_labelled(name = "tag.labelled", dispatches_on = m2m_add(labels)))]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
    }
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
    thorn::seaorm::behavior!(ActiveModel);
}

pub mod author {
    use sea_orm::entity::prelude::*;
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "authors")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
    }
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
    impl ActiveModelBehavior for ActiveModel {}
}

pub mod article_tag {
    use sea_orm::entity::prelude::*;
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "article_tags")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub article_id: i32,
        #[sea_orm(primary_key, auto_increment = false)]
        pub tag_id: i32,
    }
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(belongs_to = "super::article::Entity", from = "Column::ArticleId", to = "super::article::Column::Id")]
        Article,
        #[sea_orm(belongs_to = "super::tag::Entity", from = "Column::TagId", to = "super::tag::Column::Id")]
        Tag,
    }
    impl ActiveModelBehavior for ActiveModel {}
}

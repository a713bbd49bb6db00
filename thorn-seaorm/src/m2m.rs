//! Many-to-many changes over SeaORM's own relation definitions.
//!
//! SeaORM declares a many-to-many relation as `Related<R>` with a
//! junction: `to()` goes from the junction to `R`, `via()` from the model
//! to the junction. [`link`], [`unlink`] and [`clear`] read the junction
//! table and its columns from those definitions, write the junction rows
//! with one statement, and send the relation's events once, with the
//! keys of the related rows whose links changed:
//!
//! ```
//! # mod article {
//! #     use sea_orm::entity::prelude::*;
//! #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, thorn::WebhookModel)]
//! #     #[sea_orm(table_name = "articles")]
//! #     #[webhook_model(on_tagged(name = "article.tagged", dispatches_on = m2m_add(tags)))]
//! #     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub title: String }
//! #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//! #     pub enum Relation {}
//! #     impl Related<super::tag::Entity> for Entity {
//! #         fn to() -> RelationDef { super::article_tag::Relation::Tag.def() }
//! #         fn via() -> Option<RelationDef> { Some(super::article_tag::Relation::Article.def().rev()) }
//! #     }
//! #     thorn::seaorm::behavior!(ActiveModel);
//! # }
//! # mod tag {
//! #     use sea_orm::entity::prelude::*;
//! #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
//! #     #[sea_orm(table_name = "tags")]
//! #     pub struct Model { #[sea_orm(primary_key)] pub id: i32, pub name: String }
//! #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//! #     pub enum Relation {}
//! #     impl ActiveModelBehavior for ActiveModel {}
//! # }
//! # mod article_tag {
//! #     use sea_orm::entity::prelude::*;
//! #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
//! #     #[sea_orm(table_name = "article_tags")]
//! #     pub struct Model {
//! #         #[sea_orm(primary_key, auto_increment = false)]
//! #         pub article_id: i32,
//! #         #[sea_orm(primary_key, auto_increment = false)]
//! #         pub tag_id: i32,
//! #     }
//! #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//! #     pub enum Relation {
//! #         #[sea_orm(belongs_to = "super::article::Entity", from = "Column::ArticleId", to = "super::article::Column::Id")]
//! #         Article,
//! #         #[sea_orm(belongs_to = "super::tag::Entity", from = "Column::TagId", to = "super::tag::Column::Id")]
//! #         Tag,
//! #     }
//! #     impl ActiveModelBehavior for ActiveModel {}
//! # }
//! # use sea_orm::{ConnectionTrait, DbErr};
//! # fn main() {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! # let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! # db.execute_unprepared("CREATE TABLE article_tags (article_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, PRIMARY KEY (article_id, tag_id))").await?;
//! # thorn::seaorm::set_global(thorn::Thorn::new(thorn::Config { dispatcher: thorn::DispatcherKind::Disabled, ..Default::default() }).unwrap()).unwrap();
//! # let article = article::Model { id: 1, title: "Hello".into() };
//! # let (rust, sql) = (tag::Model { id: 3, name: "rust".into() }, tag::Model { id: 4, name: "sql".into() });
//! // `impl Related<tag::Entity> for article::Entity` has `via()` through article_tags.
//! let txn = thorn::seaorm::begin(&db).await?;
//! let linked = thorn::seaorm::link(&*txn, &article, article::Model::TAGS, &[rust, sql]).await?;
//! txn.commit().await?; // "article.tagged" leaves with {"relation": "tags", "related": [3, 4]}
//! assert_eq!(linked, 2);
//! # Ok::<(), DbErr>(())
//! # }).unwrap();
//! # }
//! ```
//!
//! The relation constant (`article::Model::TAGS`) comes from the model's
//! `#[webhook_model(...)]` block, so a misspelt relation does not compile;
//! a related entity without `Related` from the model's does not either.

use std::str::FromStr;

use sea_orm::sea_query::{
    Alias, Condition, Expr, ExprTrait, OnConflict, Query, TableRef, Value, ValueTuple,
    sea_value_to_json_value,
};
use sea_orm::{
    ConnectionTrait, DbErr, EntityName, EntityTrait, IdenStatic, Identity, Iterable, ModelTrait,
    PrimaryKeyToColumn, PrimaryKeyTrait, Related, TryGetableMany,
};
use thorn_core::integration::WebhooksExt;
use thorn_core::{DispatchOn, Relation, WebhookModel};

use crate::{admit, core_error, fire, thorn_for};

type EntityOf<M> = <M as ModelTrait>::Entity;
type KeyOf<E> = <<E as EntityTrait>::PrimaryKey as PrimaryKeyTrait>::ValueType;

/// Links `instance` to each of `related` through `relation`: inserts the
/// junction rows that `Related<R>::via()` names (one `INSERT ... ON
/// CONFLICT DO NOTHING RETURNING`; a link that already exists is left as
/// it is) and sends the `m2m_add(relation)` events once, with the keys of
/// the rows linked now. Returns how many links were made; nothing is sent
/// when none was. See the [module docs](self) for an example.
pub async fn link<M, R, C>(
    db: &C,
    instance: &M,
    relation: Relation<M>,
    related: &[R],
) -> Result<u64, DbErr>
where
    M: WebhookModel + ModelTrait,
    R: ModelTrait,
    EntityOf<M>: Related<EntityOf<R>>,
    C: ConnectionTrait,
{
    let on = relation.added();
    let junction = start::<M, EntityOf<R>, C>(db, on)?;
    if related.is_empty() {
        return Ok(0);
    }
    let own = junction.own_values(instance)?;
    let mut insert = Query::insert();
    insert
        .into_table(junction.table.clone())
        .columns(junction.own.iter().chain(&junction.other).map(Alias::new));
    for row in related {
        let values = own
            .iter()
            .cloned()
            .chain(junction.other_values(row)?)
            .map(Expr::val);
        insert
            .values(values)
            .map_err(|e| DbErr::Custom(format!("thorn: {}: {e}", junction.name(on))))?;
    }
    insert.on_conflict(OnConflict::new().do_nothing().to_owned());
    insert.returning(Query::returning().columns(junction.returned()));
    let statement = db.get_database_backend().build(&insert);
    let keys = junction
        .changed::<EntityOf<R>>(db.query_all_raw(statement).await?)
        .map_err(|e| key_error(&junction, on, e))?;
    finish(db, instance, on, keys).await
}

/// Unlinks `instance` from each of `related` through `relation`: deletes
/// their junction rows (one `DELETE ... RETURNING`) and sends the
/// `m2m_remove(relation)` events once, with the keys of the rows that were
/// linked. Returns how many links were removed; nothing is sent when none
/// was.
pub async fn unlink<M, R, C>(
    db: &C,
    instance: &M,
    relation: Relation<M>,
    related: &[R],
) -> Result<u64, DbErr>
where
    M: WebhookModel + ModelTrait,
    R: ModelTrait,
    EntityOf<M>: Related<EntityOf<R>>,
    C: ConnectionTrait,
{
    let on = relation.removed();
    let junction = start::<M, EntityOf<R>, C>(db, on)?;
    if related.is_empty() {
        return Ok(0);
    }
    let mut which = Condition::any();
    for row in related {
        which = which.add(junction.equal(&junction.other, junction.other_values(row)?));
    }
    let condition = junction
        .equal(&junction.own, junction.own_values(instance)?)
        .add(which);
    delete::<M, EntityOf<R>, C>(db, instance, on, &junction, condition).await
}

/// Removes every link of `instance` through `relation` to rows of
/// `related` (an entity, as in SeaORM's `find_related(tag::Entity)`):
/// deletes its junction rows (one `DELETE ... RETURNING`) and sends the
/// `m2m_clear(relation)` events once, with the keys that were linked.
/// Returns how many links were removed; nothing is sent when none was.
pub async fn clear<M, E, C>(
    db: &C,
    instance: &M,
    relation: Relation<M>,
    related: E,
) -> Result<u64, DbErr>
where
    M: WebhookModel + ModelTrait,
    E: EntityTrait,
    EntityOf<M>: Related<E>,
    C: ConnectionTrait,
{
    let _ = related;
    let on = relation.cleared();
    let junction = start::<M, E, C>(db, on)?;
    let condition = junction.equal(&junction.own, junction.own_values(instance)?);
    delete::<M, E, C>(db, instance, on, &junction, condition).await
}

/// The junction of a many-to-many relation, from `Related::to()` and
/// `via()`.
struct Junction {
    table: TableRef,
    /// The junction's columns that point at the model.
    own: Vec<String>,
    /// The model's columns they point at.
    own_key: Vec<String>,
    /// The junction's columns that point at the related entity.
    other: Vec<String>,
    /// The related entity's columns they point at.
    other_key: Vec<String>,
    /// The related entity's primary key columns, in the key's order.
    primary: Vec<String>,
    model: &'static str,
}

fn names(identity: &Identity) -> Vec<String> {
    identity.iter().map(|c| c.inner().into_owned()).collect()
}

impl Junction {
    fn of<M, E>(on: DispatchOn) -> Result<Junction, DbErr>
    where
        M: WebhookModel + ModelTrait,
        E: EntityTrait,
        EntityOf<M>: Related<E>,
    {
        let model = M::webhooks().model();
        let to = <EntityOf<M> as Related<E>>::to();
        let refuse = |why: String| {
            DbErr::Custom(format!(
                "thorn: {model} ({}): {why}",
                on.relation().unwrap_or_default()
            ))
        };
        let Some(via) = <EntityOf<M> as Related<E>>::via() else {
            return Err(refuse(format!(
                "Related<{}> has no via(): it is not a many-to-many relation through a junction table",
                E::default().table_name()
            )));
        };
        if format!("{:?}", via.to_tbl) != format!("{:?}", to.from_tbl) {
            return Err(refuse(format!(
                "Related<{}>: via() ends at {:?} but to() starts at {:?}; they must name the same junction table",
                E::default().table_name(),
                via.to_tbl,
                to.from_tbl
            )));
        }
        let junction = Junction {
            table: to.from_tbl.clone(),
            own: names(&via.to_col),
            own_key: names(&via.from_col),
            other: names(&to.from_col),
            other_key: names(&to.to_col),
            // The links come back as the related entity's primary key.
            primary: E::PrimaryKey::iter()
                .map(|k| k.into_column().as_str().to_owned())
                .collect(),
            model,
        };
        let (mut primary, mut other_key) = (junction.primary.clone(), junction.other_key.clone());
        primary.sort();
        other_key.sort();
        if primary != other_key {
            return Err(refuse(format!(
                "the junction points at {}({}), not at its primary key ({})",
                E::default().table_name(),
                junction.other_key.join(", "),
                junction.primary.join(", ")
            )));
        }
        Ok(junction)
    }

    fn name(&self, on: DispatchOn) -> String {
        format!("{} ({})", self.model, on.relation().unwrap_or_default())
    }

    fn own_values<M: ModelTrait>(&self, instance: &M) -> Result<Vec<Value>, DbErr> {
        values(instance, &self.own_key)
    }

    fn other_values<R: ModelTrait>(&self, row: &R) -> Result<Vec<Value>, DbErr> {
        values(row, &self.other_key)
    }

    /// `columns = values`, column by column.
    fn equal(&self, columns: &[String], values: Vec<Value>) -> Condition {
        columns
            .iter()
            .zip(values)
            .fold(Condition::all(), |all, (column, value)| {
                all.add(Expr::col(Alias::new(column)).eq(value))
            })
    }

    /// The junction's columns for the related entity's primary key, in
    /// the key's order, for `RETURNING`.
    fn returned(&self) -> Vec<Alias> {
        self.primary
            .iter()
            .filter_map(|key| self.other_key.iter().position(|k| k == key))
            .map(|i| Alias::new(&self.other[i]))
            .collect()
    }

    /// The related keys of the junction rows a statement returned (its
    /// `RETURNING` is [`Junction::returned`]), as JSON.
    fn changed<E: EntityTrait>(
        &self,
        rows: Vec<sea_orm::QueryResult>,
    ) -> Result<Vec<serde_json::Value>, sea_orm::TryGetError> {
        rows.iter()
            .map(|row| {
                let key = KeyOf::<E>::try_get_many_by_index(row)?;
                Ok(
                    match sea_orm::sea_query::IntoValueTuple::into_value_tuple(key) {
                        ValueTuple::One(v) => sea_value_to_json_value(&v),
                        many => serde_json::Value::Array(
                            many.into_iter()
                                .map(|v| sea_value_to_json_value(&v))
                                .collect(),
                        ),
                    },
                )
            })
            .collect()
    }
}

/// The values of `row`'s `columns`, by name.
fn values<M: ModelTrait>(row: &M, columns: &[String]) -> Result<Vec<Value>, DbErr> {
    columns
        .iter()
        .map(|name| {
            <<EntityOf<M> as EntityTrait>::Column as FromStr>::from_str(name)
                .map(|column| row.get(column))
                .map_err(|_| {
                    DbErr::Custom(format!(
                        "thorn: {} has no column {name}, which its relation names",
                        EntityOf::<M>::default().table_name()
                    ))
                })
        })
        .collect()
}

fn key_error(junction: &Junction, on: DispatchOn, error: sea_orm::TryGetError) -> DbErr {
    let why = match error {
        sea_orm::TryGetError::DbErr(e) => e.to_string(),
        sea_orm::TryGetError::Null(column) => format!("{column} is NULL"),
    };
    DbErr::Custom(format!(
        "thorn: {}: the changed links' keys could not be read: {why}",
        junction.name(on)
    ))
}

/// The junction of `on`'s relation to `E`, once checked, before any
/// statement runs, that `on`'s events can follow `db`.
fn start<M, E, C>(db: &C, on: DispatchOn) -> Result<Junction, DbErr>
where
    M: WebhookModel + ModelTrait,
    E: EntityTrait,
    EntityOf<M>: Related<E>,
    C: ConnectionTrait,
{
    let junction = Junction::of::<M, E>(on)?;
    M::webhooks()
        .check_m2m(on)
        .map_err(|e| core_error(M::webhooks().model(), e))?;
    admit::<M, C>(db, on)?;
    Ok(junction)
}

async fn delete<M, E, C>(
    db: &C,
    instance: &M,
    on: DispatchOn,
    junction: &Junction,
    condition: Condition,
) -> Result<u64, DbErr>
where
    M: WebhookModel + ModelTrait,
    E: EntityTrait,
    C: ConnectionTrait,
{
    let mut delete = Query::delete();
    delete
        .from_table(junction.table.clone())
        .cond_where(condition)
        .returning(Query::returning().columns(junction.returned()));
    let statement = db.get_database_backend().build(&delete);
    let keys = junction
        .changed::<E>(db.query_all_raw(statement).await?)
        .map_err(|e| key_error(junction, on, e))?;
    finish(db, instance, on, keys).await
}

/// Sends `instance`'s `on` events for the links in `keys`, once: the
/// context names the relation and the related keys
/// (`{"relation": "tags", "related": [1, 2]}`). Nothing for no keys.
async fn finish<M, C>(
    db: &C,
    instance: &M,
    on: DispatchOn,
    keys: Vec<serde_json::Value>,
) -> Result<u64, DbErr>
where
    M: WebhookModel,
    C: ConnectionTrait,
{
    let changed = keys.len() as u64;
    let webhooks = M::webhooks();
    if keys.is_empty() || !webhooks.fires_on(on) {
        return Ok(changed);
    }
    let context = webhooks.m2m_context(on, &keys);
    let thorn = thorn_for(webhooks.model())?;
    fire(&thorn, db, on, [(instance, None)], Some(context)).await?;
    Ok(changed)
}

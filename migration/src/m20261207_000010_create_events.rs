use sea_orm_migration::{prelude::*, schema::*};

use crate::columns;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        // The change feed's outbox: each write inserts its event in its own transaction.
        manager
            .create_table(
                columns::table(backend, Events::Table)
                    // Taken when the event is inserted: the order of writes one after another
                    // (a change answered before another was sent has the lower number).
                    .col(big_pk_auto(Events::Seq))
                    .col(uuid_uniq(Events::Id))
                    // The place in the feed, given by the sequencer to committed events only, in
                    // `seq` order, so that a position is readable only when every lower one is.
                    .col(big_integer_null(Events::Position))
                    .col(string_len(Events::EventType, 32))
                    .col(uuid(Events::ResourceId))
                    .col(big_integer(Events::Version))
                    .col(columns::timestamp(backend, Events::OccurredAt))
                    // The resource as a GET right after the change answers it (JSON).
                    .col(text(Events::Data))
                    .to_owned(),
            )
            .await?;
        // Reading the feed by position; unique, so two sequencers can never hand out one
        // position twice (the loser rolls back).
        manager
            .create_index(
                Index::create()
                    .name("idx_events_position")
                    .table(Events::Table)
                    .col(Events::Position)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Removing events past their retention.
        manager
            .create_index(
                Index::create()
                    .name("idx_events_occurred_at")
                    .table(Events::Table)
                    .col(Events::OccurredAt)
                    .to_owned(),
            )
            .await?;
        // Who publishes the feed to a broker, until when, and how far it has got.
        manager
            .create_table(
                columns::table(backend, EventRelays::Table)
                    .col(string_len(EventRelays::Name, 64).primary_key())
                    .col(string_len(EventRelays::Holder, 64))
                    .col(columns::timestamp(backend, EventRelays::LeaseUntil))
                    .col(big_integer(EventRelays::PublishedPosition))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(EventRelays::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Events::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Events {
    Table,
    Seq,
    Id,
    Position,
    EventType,
    ResourceId,
    Version,
    OccurredAt,
    Data,
}

#[derive(DeriveIden)]
pub enum EventRelays {
    Table,
    Name,
    Holder,
    LeaseUntil,
    PublishedPosition,
}

//! The `Idempotency-Key` protocol, the same on every engine. Placing an order with a key first
//! claims the key, in the order's own transaction: the claim names the order and a hash of the
//! request. A claim that is already there (a unique key) means an earlier request with the key
//! committed, and this one is answered from it (`replayed`); each engine only stores and reads
//! claims.

use uuid::Uuid;

use super::error::{Conflict, StoreError};
use crate::domain::model::Idempotency;

/// A key's claim as stored.
pub struct Claim {
    pub request_hash: String,
    pub order_id: Uuid,
}

/// The order to answer a request with, whose key (`idempotency`) an earlier request claimed
/// (`claim`, as read after this request's claim was refused): that request's order when the two
/// requests are the same, a conflict when they differ.
pub fn replayed(
    idempotency: Option<&Idempotency>,
    claim: Option<Claim>,
) -> Result<Uuid, StoreError> {
    let Some(idempotency) = idempotency else {
        return Err(StoreError::internal("idempotency conflict without a key"));
    };
    // A claim is never removed while its key can be refused: it is committed with its order.
    let claim = claim.ok_or_else(|| StoreError::internal("the idempotency key's claim is gone"))?;
    if claim.request_hash != idempotency.request_hash {
        return Err(StoreError::Conflict(Conflict::IdempotencyKeyReused));
    }
    Ok(claim.order_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IdempotencyKey;

    fn key(hash: &str) -> Idempotency {
        Idempotency {
            key: IdempotencyKey::parse("k-1").expect("a valid key"),
            request_hash: hash.to_owned(),
        }
    }

    fn claim(hash: &str, order_id: Uuid) -> Option<Claim> {
        Some(Claim {
            request_hash: hash.to_owned(),
            order_id,
        })
    }

    #[test]
    fn the_same_request_is_answered_with_the_claimed_order() {
        let order = Uuid::now_v7();
        let answer = replayed(Some(&key("h1")), claim("h1", order));
        assert_eq!(answer.ok(), Some(order));
    }

    #[test]
    fn another_request_with_the_key_is_a_conflict() {
        let answer = replayed(Some(&key("h2")), claim("h1", Uuid::now_v7()));
        assert!(
            matches!(
                answer,
                Err(StoreError::Conflict(Conflict::IdempotencyKeyReused))
            ),
            "{answer:?}"
        );
    }

    #[test]
    fn a_refused_claim_with_no_claim_to_read_is_an_internal_error() {
        for (idempotency, claim) in [(Some(key("h1")), None), (None, claim("h1", Uuid::now_v7()))] {
            let answer = replayed(idempotency.as_ref(), claim);
            assert!(
                matches!(answer, Err(StoreError::Internal { .. })),
                "{answer:?}"
            );
        }
    }
}

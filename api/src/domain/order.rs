use std::collections::BTreeMap;

use uuid::Uuid;

use super::BoundedInt;

/// Units of one product on one order line.
pub type Quantity = BoundedInt<i32, 1, 10_000>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: i32,
}

/// The lines of an order with one line per product, in ascending product-id order: the order in
/// which stock rows are locked, so two orders never wait on each other in opposite orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLines(Vec<OrderLine>);

impl OrderLines {
    /// At most 100 lines may be sent (before merging).
    pub const MAX_LINES: usize = 100;

    /// Merges lines for the same product. A merged quantity may exceed 10,000 only as the sum of
    /// valid lines, which is checked against stock like any other quantity.
    pub fn merge(lines: impl IntoIterator<Item = (Uuid, Quantity)>) -> Self {
        let mut merged: BTreeMap<Uuid, i32> = BTreeMap::new();
        for (product_id, quantity) in lines {
            let total = merged.entry(product_id).or_default();
            *total = total.saturating_add(quantity.get());
        }
        Self(
            merged
                .into_iter()
                .map(|(product_id, quantity)| OrderLine {
                    product_id,
                    quantity,
                })
                .collect(),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = &OrderLine> {
        self.0.iter()
    }

    pub fn product_ids(&self) -> Vec<Uuid> {
        self.0.iter().map(|line| line.product_id).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Paid,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(Self::Pending),
            "paid" => Some(Self::Paid),
            "shipped" => Some(Self::Shipped),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }

    /// The states an order may move to `to` from: pending → paid → shipped; pending or paid →
    /// cancelled. Nothing leaves shipped or cancelled.
    pub fn allowed_sources(to: Self) -> &'static [Self] {
        match to {
            Self::Paid => &[Self::Pending],
            Self::Shipped => &[Self::Paid],
            Self::Cancelled => &[Self::Pending, Self::Paid],
            Self::Pending => &[],
        }
    }

    pub fn can_move_to(self, to: Self) -> bool {
        Self::allowed_sources(to).contains(&self)
    }
}

/// An `Idempotency-Key`: 1–255 visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let visible = raw.bytes().all(|b| b.is_ascii_graphic());
        if raw.is_empty() || raw.len() > 255 || !visible {
            return Err("must be 1 to 255 visible ASCII characters".to_owned());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_for_one_product_are_merged_in_id_order() {
        let (a, b) = (Uuid::from_u128(2), Uuid::from_u128(1));
        let q = |n| Quantity::parse(n).unwrap();
        let lines = OrderLines::merge([(a, q(2)), (b, q(1)), (a, q(3))]);
        assert_eq!(
            lines.iter().copied().collect::<Vec<_>>(),
            vec![
                OrderLine {
                    product_id: b,
                    quantity: 1
                },
                OrderLine {
                    product_id: a,
                    quantity: 5
                },
            ]
        );
    }

    #[test]
    fn the_transition_table() {
        use OrderStatus::*;
        let all = [Pending, Paid, Shipped, Cancelled];
        let allowed = [
            (Pending, Paid),
            (Paid, Shipped),
            (Pending, Cancelled),
            (Paid, Cancelled),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_move_to(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("order-2026-11-24#1").is_ok());
        for bad in ["", "has space", "tab\t", "é", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}

//! `/v1/orders` and `/v1/users/{id}/orders`

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Tag;
use super::bearer::BearerAuth;
use super::body::{JsonBody, present};
use super::conditional::{self, resource_responses};
use super::enums::OrderStatusDto;
use super::error::ApiError;
use super::failures::{Failure, NestedListFailures, PlaceFailures, ReadFailures, UpdateFailures};
use super::pagination::{Paging, page_of};
use super::timestamp::Timestamp;
use crate::auth::{Caller, access};
use crate::domain::model::{Idempotency, Order, OrderFilter, PlaceOrder, Placed};
use crate::domain::{Bounds, IdempotencyKey, OrderLines, OrderStatus, Quantity, Range, Validator};
use crate::state::AppState;

// `Serialize` writes exactly what `ToJSON` does (`conditional::json_bytes`).
#[derive(Object, serde::Serialize)]
#[oai(rename = "OrderItem")]
pub struct OrderItemDto {
    pub product_id: Uuid,
    pub quantity: i64,
    /// The product's price when the order was placed.
    pub unit_price_cents: i64,
    /// `quantity × unit_price_cents`.
    pub line_total_cents: i64,
}

// `Serialize` writes exactly what `ToJSON` does (`conditional::json_bytes`).
#[derive(Object, serde::Serialize)]
#[oai(rename = "Order")]
pub struct OrderDto {
    #[oai(read_only)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatusDto,
    pub total_cents: i64,
    /// One item per product, in product-id order.
    pub items: Vec<OrderItemDto>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<Order> for OrderDto {
    fn from(order: Order) -> Self {
        Self {
            id: order.id,
            user_id: order.user_id,
            status: order.status.into(),
            total_cents: order.total_cents,
            items: order
                .items
                .into_iter()
                .map(|item| OrderItemDto {
                    product_id: item.product_id,
                    quantity: i64::from(item.quantity),
                    unit_price_cents: item.unit_price_cents,
                    line_total_cents: item.unit_price_cents * i64::from(item.quantity),
                })
                .collect(),
            created_at: order.created_at.into(),
            updated_at: order.updated_at.into(),
        }
    }
}

page_of!(
    OrderPage,
    OrderDto,
    "A page of orders, newest first, each with its items."
);

#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "OrderLine")]
pub struct OrderLineRequest {
    pub product_id: Uuid,
    /// 1–10,000.
    pub quantity: i64,
}

/// The bounds of the request fields, from the domain types that check them (see `spec`).
pub const BOUNDS: &[(&str, &str, Range)] = &[("OrderLine", "quantity", Quantity::RANGE)];

/// Prices come from the products, never from the client. Lines for the same product are merged.
#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "PlaceOrder")]
pub struct PlaceOrderRequest {
    /// Whom the order is for: a customer may omit it (themself) or name themself; an admin
    /// names the customer.
    #[serde(default, deserialize_with = "present")]
    pub user_id: Option<Uuid>,
    /// 1–100 lines.
    #[oai(validator(min_items = 1, max_items = 100))]
    pub items: Vec<OrderLineRequest>,
}

#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "UpdateOrder")]
pub struct UpdateOrderRequest {
    /// pending → paid → shipped; pending or paid → cancelled (which gives the stock back).
    pub status: OrderStatusDto,
}

resource_responses!(OrderRead, OrderWritten, OrderPlaced, OrderDto);

const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

pub struct OrdersApi;

#[OpenApi(tag = "Tag::Orders")]
impl OrdersApi {
    /// Place an order
    ///
    /// One transaction: the order, its items and every stock decrement commit together or not
    /// at all. Stock never goes below zero.
    #[oai(path = "/v1/orders", method = "post", operation_id = "placeOrder")]
    async fn place(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        /// Makes retries safe: the same key with the same body answers the first order again
        /// (kept at least 24 hours); with a different body, 409. 1–255 visible ASCII characters.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        raw: &Request,
        body: JsonBody<PlaceOrderRequest>,
    ) -> Result<OrderPlaced, Failure<PlaceFailures>> {
        let request = body.0;
        let user_id = access::place_order(&auth.0, request.user_id)?;
        let mut v = Validator::default();
        // The header extractor takes a value with bytes outside visible ASCII for an absent
        // header; such a key must be refused, not ignored, so it is parsed from the raw bytes.
        let sent_key = idempotency_key.0.or_else(|| {
            raw.headers()
                .get(IDEMPOTENCY_KEY)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        });
        let key = v.check_opt(IDEMPOTENCY_KEY, sent_key.as_deref(), IdempotencyKey::parse);
        if request.items.is_empty() {
            v.push("items", "must contain at least one item");
        }
        if request.items.len() > OrderLines::MAX_LINES {
            v.push(
                "items",
                format!("must contain at most {} items", OrderLines::MAX_LINES),
            );
        }
        let mut lines = Vec::with_capacity(request.items.len());
        for (index, line) in request.items.iter().enumerate() {
            let field = format!("items[{index}].quantity");
            if let Some(quantity) = v.check(&field, line.quantity, Quantity::parse) {
                lines.push((line.product_id, quantity));
            }
        }
        let key = v.finish(|| key).map_err(ApiError::Validation)?;
        let idempotency = key.map(|key| Idempotency {
            key,
            request_hash: fingerprint(user_id, &request),
        });
        let placed = state
            .orders
            .place(PlaceOrder {
                user_id,
                lines: OrderLines::merge(lines),
                idempotency,
            })
            .await?;
        let order = match placed {
            Placed::New(order) | Placed::Replayed(order) => order,
        };
        let location = format!("/v1/orders/{}", order.id);
        let tag = conditional::etag(order.version);
        Ok(OrderPlaced::Created(Json(order.into()), location, tag))
    }

    /// Get an order with its items
    #[oai(path = "/v1/orders/:id", method = "get", operation_id = "getOrder")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Answers 304 when it names the current `ETag`.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<OrderRead, Failure<ReadFailures>> {
        let order = self.visible_order(&state, &auth.0, id.0).await?;
        let (id, version) = (order.id, order.version);
        let representations = &state.representations;
        let inm = if_none_match.0.as_deref();
        Ok(OrderRead::of(representations, id, version, inm, || order.into()).await)
    }

    /// Change an order's status
    ///
    /// Allowed: pending → paid → shipped; pending → cancelled; paid → cancelled. Anything else
    /// is 409 `invalid_transition`.
    #[oai(
        path = "/v1/orders/:id",
        method = "patch",
        operation_id = "updateOrder"
    )]
    async fn update(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Applies the change only if it names the current `ETag` (else 412).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UpdateOrderRequest>,
    ) -> Result<OrderWritten, Failure<UpdateFailures>> {
        let to = OrderStatus::from(body.0.status);
        let current = state.orders.get(id.0).await?;
        access::change_order(&auth.0, current.user_id, to)?;
        let expected = conditional::if_match(if_match.0.as_deref());
        let order = state
            .orders
            .transition(id.0, to, expected.as_deref())
            .await?;
        let tag = conditional::etag(order.version);
        Ok(OrderWritten::Ok(Json(order.into()), tag))
    }

    /// List a user's orders, newest first
    #[oai(
        path = "/v1/users/:id/orders",
        method = "get",
        operation_id = "listUserOrders"
    )]
    async fn list_for_user(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        id: Path<Uuid>,
        // `page`, `per_page` and `cursor`, declared in the document by `spec`.
        paging: Paging,
        /// Only orders with this status.
        status: Query<Option<OrderStatusDto>>,
    ) -> Result<Json<OrderPage>, Failure<NestedListFailures>> {
        access::see_user(&auth.0, id.0)?;
        let request = paging.request("orders")?;
        let filter = OrderFilter {
            status: status.0.map(Into::into),
        };
        let orders = state.orders.list_for_user(id.0, filter, request).await?;
        Ok(Json(OrderPage::of("orders", request, orders)))
    }
}

impl OrdersApi {
    /// The order, if the caller may see it; otherwise 404, as if it did not exist.
    async fn visible_order(
        &self,
        state: &AppState,
        caller: &Caller,
        id: Uuid,
    ) -> Result<Order, ApiError> {
        let order = state.orders.get(id).await?;
        access::see_order(caller, order.user_id)?;
        Ok(order)
    }
}

/// What makes two requests "the same" for idempotency: the user and the lines as sent, in order.
fn fingerprint(user_id: Uuid, request: &PlaceOrderRequest) -> String {
    let mut hasher = Sha256::new();
    hasher.update(user_id.as_bytes());
    for line in &request.items {
        hasher.update(line.product_id.as_bytes());
        hasher.update(line.quantity.to_be_bytes());
    }
    hex::encode(hasher.finalize())
}

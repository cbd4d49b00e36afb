//! `/v1/products`

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;
use uuid::Uuid;

use super::Tag;
use super::bearer::BearerAuth;
use super::body::{JsonBody, present};
use super::conditional::{self, resource_responses};
use super::error::ApiError;
use super::failures::{
    CreateFailures, DeleteFailures, Failure, PublicListFailures, PublicReadFailures, UpdateFailures,
};
use super::pagination::{Paging, page_of};
use super::timestamp::Timestamp;
use super::users::Deleted;
use crate::auth::access;
use crate::domain::model::{NewProduct, Product, ProductChanges, ProductFilter};
use crate::domain::{Bounds, Cents, ProductName, Range, Sku, Stock, Validator};
use crate::state::AppState;

// `Serialize` writes exactly what `ToJSON` does (`conditional::json_bytes`).
#[derive(Object, serde::Serialize)]
#[oai(rename = "Product")]
pub struct ProductDto {
    #[oai(read_only)]
    pub id: Uuid,
    /// Unique and immutable.
    pub sku: String,
    pub name: String,
    /// Integer cents.
    pub price_cents: i64,
    pub stock: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<Product> for ProductDto {
    fn from(product: Product) -> Self {
        Self {
            id: product.id,
            sku: product.sku,
            name: product.name,
            price_cents: product.price_cents,
            stock: i64::from(product.stock),
            created_at: product.created_at.into(),
            updated_at: product.updated_at.into(),
        }
    }
}

page_of!(ProductPage, ProductDto, "A page of products, newest first.");

#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "CreateProduct")]
pub struct CreateProductRequest {
    /// 1–64 characters after trimming; unique; cannot be changed later.
    pub sku: String,
    /// 1–200 characters after trimming.
    pub name: String,
    /// Integer cents, 0–1,000,000,000.
    pub price_cents: i64,
    /// 0–1,000,000,000.
    pub stock: i64,
}

/// Any subset of `name`, `price_cents`, `stock`. The SKU is immutable: sending it is a 422.
#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "UpdateProduct")]
pub struct UpdateProductRequest {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub price_cents: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    pub stock: Option<i64>,
    /// Accepted by the parser only to be refused with a clear message.
    #[serde(default, deserialize_with = "present")]
    #[oai(skip)]
    pub sku: Option<serde_json::Value>,
}

/// The bounds of the request fields, from the domain types that check them (see `spec`).
pub const BOUNDS: &[(&str, &str, Range)] = &[
    ("CreateProduct", "sku", Sku::RANGE),
    ("CreateProduct", "name", ProductName::RANGE),
    ("CreateProduct", "price_cents", Cents::RANGE),
    ("CreateProduct", "stock", Stock::RANGE),
    ("UpdateProduct", "name", ProductName::RANGE),
    ("UpdateProduct", "price_cents", Cents::RANGE),
    ("UpdateProduct", "stock", Stock::RANGE),
];

resource_responses!(ProductRead, ProductWritten, ProductCreated, ProductDto);

pub struct ProductsApi;

#[OpenApi(tag = "Tag::Products")]
impl ProductsApi {
    /// Create a product (admins)
    #[oai(path = "/v1/products", method = "post", operation_id = "createProduct")]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        body: JsonBody<CreateProductRequest>,
    ) -> Result<ProductCreated, Failure<CreateFailures>> {
        access::manage_products(&auth.0)?;
        let request = body.0;
        let mut v = Validator::default();
        let sku = v.check("sku", request.sku.as_str(), Sku::parse);
        let name = v.check("name", request.name.as_str(), ProductName::parse);
        let price = v.check("price_cents", request.price_cents, Cents::parse);
        let stock = v.check("stock", request.stock, Stock::parse);
        let new = v
            .finish(|| {
                Some(NewProduct {
                    sku: sku?,
                    name: name?,
                    price: price?,
                    stock: stock?,
                })
            })
            .map_err(ApiError::Validation)?;
        let product = state.products.create(new).await?;
        let location = format!("/v1/products/{}", product.id);
        let tag = conditional::etag(product.version);
        Ok(ProductCreated::Created(Json(product.into()), location, tag))
    }

    /// Get a product
    #[oai(path = "/v1/products/:id", method = "get", operation_id = "getProduct")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        id: Path<Uuid>,
        /// Answers 304 when it names the current `ETag`.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<ProductRead, Failure<PublicReadFailures>> {
        let product = state.products.get_cached(id.0).await?;
        let inm = if_none_match.0.as_deref();
        let dto = |product: &Product| product.clone().into();
        Ok(ProductRead::of_cached(&product, product.version, inm, dto))
    }

    /// List products, newest first
    ///
    /// Page mode (`page`, with totals) or keyset mode (`cursor` from a previous `next_cursor`).
    #[oai(path = "/v1/products", method = "get", operation_id = "listProducts")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        // `page`, `per_page` and `cursor`, declared in the document by `spec`.
        paging: Paging,
        /// `true`: only products in stock; `false`: only those out of stock.
        in_stock: Query<Option<bool>>,
    ) -> Result<Json<ProductPage>, Failure<PublicListFailures>> {
        let request = paging.request("products")?;
        let filter = ProductFilter {
            in_stock: in_stock.0,
        };
        let products = state.products.list(filter, request).await?;
        Ok(Json(ProductPage::of("products", request, products)))
    }

    /// Change a product (admins)
    ///
    /// Only the fields sent change; `updated_at` moves when any is sent. `sku` cannot be changed.
    #[oai(
        path = "/v1/products/:id",
        method = "patch",
        operation_id = "updateProduct"
    )]
    async fn update(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Applies the change only if it names the current `ETag` (else 412).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UpdateProductRequest>,
    ) -> Result<ProductWritten, Failure<UpdateFailures>> {
        access::manage_products(&auth.0)?;
        let request = body.0;
        let mut v = Validator::default();
        if request.sku.is_some() {
            v.push("sku", "is immutable and cannot be changed");
        }
        let name = v.check_opt("name", request.name.as_deref(), ProductName::parse);
        let price = v.check_opt("price_cents", request.price_cents, Cents::parse);
        let stock = v.check_opt("stock", request.stock, Stock::parse);
        let changes = v
            .finish(|| {
                Some(ProductChanges {
                    name: name?,
                    price: price?,
                    stock: stock?,
                })
            })
            .map_err(ApiError::Validation)?;
        let expected = conditional::if_match(if_match.0.as_deref());
        let product = state
            .products
            .update(id.0, changes, expected.as_deref())
            .await?;
        let tag = conditional::etag(product.version);
        Ok(ProductWritten::Ok(Json(product.into()), tag))
    }

    /// Delete a product (admins)
    ///
    /// A product that appears in any order cannot be deleted.
    #[oai(
        path = "/v1/products/:id",
        method = "delete",
        operation_id = "deleteProduct"
    )]
    async fn delete(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Deletes only if it names the current `ETag` (else 412).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<Deleted, Failure<DeleteFailures>> {
        access::manage_products(&auth.0)?;
        let expected = conditional::if_match(if_match.0.as_deref());
        state.products.delete(id.0, expected.as_deref()).await?;
        Ok(Deleted::NoContent)
    }
}

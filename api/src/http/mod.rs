//! The HTTP surface: one module per resource, the error mapping, the body extractor, paging, and
//! the middleware every request passes through.

pub mod bearer;
pub mod body;
pub mod conditional;
mod consistency;
mod enums;
pub mod error;
pub mod events;
pub mod failures;
mod middleware;
pub mod ops;
pub mod orders;
pub mod pagination;
pub mod products;
pub mod sessions;
mod spec;
pub mod timestamp;
pub mod users;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Route, get};
use poem_openapi::{OpenApiService, Tags};

use crate::cache::Caches;
use crate::config::Config;
use crate::domain::Hasher;
use crate::metrics::Metrics;
use crate::store::{Engine, Orders, Products, Sessions, Users};

/// Everything a request handler may use.
pub struct AppState {
    pub config: Config,
    pub db: Engine,
    pub metrics: Arc<Metrics>,
    pub users: Users,
    pub products: Products,
    pub orders: Orders,
    pub sessions: Sessions,
    /// The change feed.
    pub events: crate::store::events::Events,
    /// Every password hash and verification, on a bounded queue.
    pub hasher: Hasher,
    pub caches: Caches,
    /// With read replicas: the database positions this instance knows of (its answers' tokens).
    pub positions: Arc<crate::store::consistency::Positions>,
    /// Serialized single-resource representations, by id and version (ids are UUIDv7, unique
    /// across resources).
    pub representations: conditional::Representations,
    /// PostgreSQL's read replicas, when configured.
    pub replicas: Option<Arc<crate::store::sql::replicas::Replicas>>,
    /// The `application_name` of this instance's cache-invalidation listener (PostgreSQL).
    pub listener_name: String,
}

#[derive(Tags)]
pub enum Tag {
    /// Logging in and out: bearer tokens.
    Sessions,
    /// Customers.
    Users,
    /// The catalogue and its stock.
    Products,
    /// Orders and their items.
    Orders,
    /// The change feed: every committed change, in order.
    Events,
    /// Health, readiness and metrics.
    Operations,
}

type Apis = (
    sessions::SessionsApi,
    users::UsersApi,
    products::ProductsApi,
    orders::OrdersApi,
    events::EventsApi,
    ops::OpsApi,
);

fn service(state: Arc<AppState>) -> OpenApiService<Apis, ()> {
    let apis = (
        sessions::SessionsApi(state.clone()),
        users::UsersApi(state.clone()),
        products::ProductsApi(state.clone()),
        orders::OrdersApi(state.clone()),
        events::EventsApi(state.clone()),
        ops::OpsApi(state),
    );
    OpenApiService::new(apis, "Storefront", env!("CARGO_PKG_VERSION"))
        .summary("Users, products and orders")
        .description(spec::DESCRIPTION)
}

/// The OpenAPI document the server serves, as JSON.
pub fn openapi_json(state: Arc<AppState>) -> serde_json::Value {
    spec::finish(&service(state).spec())
}

/// The OpenAPI document as YAML, exactly as `openapi.yaml` is checked in.
pub fn openapi_yaml(state: Arc<AppState>) -> String {
    spec::to_yaml(&openapi_json(state))
}

/// The whole application: API routes, documents, Swagger UI and the middleware.
pub fn app(state: Arc<AppState>) -> impl Endpoint + 'static {
    let service = service(state.clone());
    let document = spec::finish(&service.spec());
    let json = Arc::new(document.to_string());
    let yaml = Arc::new(spec::to_yaml(&document));
    let docs = Arc::new(spec::swagger_ui_html(&service));
    let templates = Arc::new(spec::route_templates(&document));
    Route::new()
        .nest("/", service)
        .at(
            "/openapi.json",
            get(spec::serve(json, "application/json; charset=utf-8")),
        )
        .at(
            "/openapi.yaml",
            get(spec::serve(yaml, "application/yaml; charset=utf-8")),
        )
        .at("/docs", get(spec::serve(docs, "text/html; charset=utf-8")))
        .data(body::BodyLimit(state.config.max_body_bytes))
        .data(state.clone())
        .around(move |next, request| {
            middleware::observe(state.clone(), templates.clone(), next, request)
        })
}

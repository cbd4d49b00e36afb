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

use crate::state::AppState;

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

/// The operations, which take the application's state from each request (`app` gives it to
/// every one): the document is the same without any state, and needs no database.
fn service() -> OpenApiService<Apis, ()> {
    let apis = (
        sessions::SessionsApi,
        users::UsersApi,
        products::ProductsApi,
        orders::OrdersApi,
        events::EventsApi,
        ops::OpsApi,
    );
    OpenApiService::new(apis, "Storefront", env!("CARGO_PKG_VERSION"))
        .summary("Users, products and orders")
        .description(spec::DESCRIPTION)
}

/// The OpenAPI document the server serves, as JSON.
pub fn openapi_json() -> serde_json::Value {
    spec::finish(&service().spec())
}

/// The OpenAPI document as YAML, exactly as `openapi.yaml` is checked in.
pub fn openapi_yaml() -> String {
    spec::to_yaml(&openapi_json())
}

/// The whole application: API routes, documents, Swagger UI and the middleware.
pub fn app(state: Arc<AppState>) -> impl Endpoint + 'static {
    let service = service();
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

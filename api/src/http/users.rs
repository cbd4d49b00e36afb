//! `/v1/users`

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use uuid::Uuid;

use super::Tag;
use super::bearer::{self, BearerAuth};
use super::body::{JsonBody, present};
use super::conditional::{self, resource_responses};
use super::enums::{UserRoleDto, UserStatusDto};
use super::error::ApiError;
use super::failures::{
    DeleteFailures, Failure, ListFailures, ReadFailures, SignUpFailures, UpdateFailures,
};
use super::middleware;
use super::pagination::{Paging, page_of};
use super::timestamp::Timestamp;
use crate::auth::access;
use crate::domain::model::{NewUser, User, UserChanges, UserFilter};
use crate::domain::{Bounds, Email, Password, Range, UserName, UserRole, UserStatus, Validator};
use crate::state::AppState;

/// A user. The password is never returned.
// `Serialize` writes exactly what `ToJSON` does (`conditional::json_bytes`).
#[derive(Object, serde::Serialize)]
#[oai(rename = "User")]
pub struct UserDto {
    #[oai(read_only)]
    pub id: Uuid,
    pub name: String,
    /// Lower-cased as stored.
    pub email: String,
    pub status: UserStatusDto,
    /// `customer` or `admin`; only an admin may set it.
    pub role: UserRoleDto,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<User> for UserDto {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            name: user.name,
            email: user.email,
            status: user.status.into(),
            role: user.role.into(),
            created_at: user.created_at.into(),
            updated_at: user.updated_at.into(),
        }
    }
}

page_of!(UserPage, UserDto, "A page of users, newest first.");

#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "CreateUser")]
pub struct CreateUserRequest {
    /// 1–200 characters after trimming surrounding whitespace.
    pub name: String,
    /// A valid address of at most 254 characters; unique regardless of case.
    pub email: String,
    /// 8–128 characters; stored only as an Argon2id hash.
    #[oai(write_only)]
    pub password: String,
    /// Defaults to `active`; only an admin may set it.
    #[serde(default, deserialize_with = "present")]
    pub status: Option<UserStatusDto>,
    /// Defaults to `customer`; only an admin may set it.
    #[serde(default, deserialize_with = "present")]
    pub role: Option<UserRoleDto>,
}

/// Any subset of the fields; `{}` changes nothing.
#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "UpdateUser")]
pub struct UpdateUserRequest {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[oai(write_only)]
    pub password: Option<String>,
    /// The user's current password: required when users change their own password.
    #[serde(default, deserialize_with = "present")]
    #[oai(validator(max_length = 1024), write_only)]
    pub current_password: Option<String>,
    /// Admins only.
    #[serde(default, deserialize_with = "present")]
    pub status: Option<UserStatusDto>,
    /// Admins only.
    #[serde(default, deserialize_with = "present")]
    pub role: Option<UserRoleDto>,
}

/// The bounds of the request fields, from the domain types that check them (see `spec`).
pub const BOUNDS: &[(&str, &str, Range)] = &[
    ("CreateUser", "name", UserName::RANGE),
    ("CreateUser", "email", Email::RANGE),
    ("CreateUser", "password", Password::RANGE),
    ("UpdateUser", "name", UserName::RANGE),
    ("UpdateUser", "email", Email::RANGE),
    ("UpdateUser", "password", Password::RANGE),
];

resource_responses!(UserRead, UserWritten, UserCreated, UserDto);

#[derive(ApiResponse)]
pub enum Deleted {
    /// Deleted.
    #[oai(status = 204)]
    NoContent,
}

pub struct UsersApi;

#[OpenApi(tag = "Tag::Users")]
impl UsersApi {
    /// Sign up, or create a user (admins)
    ///
    /// Anyone may sign up; `status` and `role` may be sent only with an admin's token.
    #[oai(path = "/v1/users", method = "post", operation_id = "createUser")]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        raw: &Request,
        body: JsonBody<CreateUserRequest>,
    ) -> Result<UserCreated, Failure<SignUpFailures>> {
        let request = body.0;
        let caller = bearer::optional_caller(&state, raw).await?;
        access::create_user(
            caller.as_ref(),
            request.status.is_some() || request.role.is_some(),
        )?;
        let mut v = Validator::default();
        let name = v.check("name", request.name.as_str(), UserName::parse);
        let email = v.check("email", request.email.as_str(), Email::parse);
        let password = v.check("password", request.password, Password::parse);
        let (name, email, password) = v
            .finish(|| Some((name?, email?, password?)))
            .map_err(ApiError::Validation)?;
        let password = state
            .hasher
            .hash(password, middleware::deadline())
            .await
            .map_err(ApiError::from)?;
        let user = state
            .users
            .create(NewUser {
                name,
                email,
                password,
                status: request.status.map_or(UserStatus::Active, Into::into),
                role: request.role.map_or(UserRole::Customer, Into::into),
            })
            .await?;
        let location = format!("/v1/users/{}", user.id);
        let tag = conditional::etag(user.version);
        Ok(UserCreated::Created(Json(user.into()), location, tag))
    }

    /// Get a user
    ///
    /// Users see themselves; admins see everyone.
    #[oai(path = "/v1/users/:id", method = "get", operation_id = "getUser")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Answers 304 when it names the current `ETag`.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<UserRead, Failure<ReadFailures>> {
        access::see_user(&auth.0, id.0)?;
        let user = state.users.get_cached(id.0).await?;
        let inm = if_none_match.0.as_deref();
        let dto = |user: &User| user.clone().into();
        Ok(UserRead::of_cached(&user, user.version, inm, dto))
    }

    /// List users, newest first (admins)
    ///
    /// Page mode (`page`, with totals) or keyset mode (`cursor` from a previous `next_cursor`).
    #[oai(path = "/v1/users", method = "get", operation_id = "listUsers")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        // `page`, `per_page` and `cursor`, declared in the document by `spec`.
        paging: Paging,
        /// Only users with this status.
        status: Query<Option<UserStatusDto>>,
        /// Only the user with this email (exact, case-insensitive).
        email: Query<Option<String>>,
    ) -> Result<Json<UserPage>, Failure<ListFailures>> {
        access::list_users(&auth.0)?;
        let request = paging.request("users")?;
        let filter = UserFilter {
            status: status.0.map(Into::into),
            email: email.0,
        };
        let users = state.users.list(filter, request).await?;
        Ok(Json(UserPage::of("users", request, users)))
    }

    /// Change a user
    ///
    /// Only the fields sent change; `updated_at` moves when any is sent. `{}` returns the user
    /// unchanged. On any error nothing changes. Users change themselves (a new `password` needs
    /// `current_password`); only admins change `status` or `role`. A password, status or role
    /// change ends the user's other sessions.
    #[oai(path = "/v1/users/:id", method = "patch", operation_id = "updateUser")]
    async fn update(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Applies the change only if it names the current `ETag` (else 412).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UpdateUserRequest>,
    ) -> Result<UserWritten, Failure<UpdateFailures>> {
        let request = body.0;
        let rules = access::change_user(
            &auth.0,
            id.0,
            &access::UserChange {
                password: request.password.is_some(),
                status_or_role: request.status.is_some() || request.role.is_some(),
            },
        )?;
        let mut v = Validator::default();
        let name = v.check_opt("name", request.name.as_deref(), UserName::parse);
        let email = v.check_opt("email", request.email.as_deref(), Email::parse);
        let password = v.check_opt("password", request.password, Password::parse);
        if rules.needs_current_password && request.current_password.is_none() {
            v.push("current_password", "is required to change your password");
        }
        let (name, email, password) = v
            .finish(|| Some((name?, email?, password?)))
            .map_err(ApiError::Validation)?;
        if rules.needs_current_password {
            let current = request.current_password.unwrap_or_default();
            self.check_current_password(&state, id.0, &current).await?;
        }
        let password = match password {
            Some(password) => Some(
                state
                    .hasher
                    .hash(password, middleware::deadline())
                    .await
                    .map_err(ApiError::from)?,
            ),
            None => None,
        };
        let changes = UserChanges {
            name,
            email,
            password,
            status: request.status.map(Into::into),
            role: request.role.map(Into::into),
            keep_session: rules.keep_session,
        };
        let expected = conditional::if_match(if_match.0.as_deref());
        let user = state
            .users
            .update(id.0, changes, expected.as_deref())
            .await?;
        let tag = conditional::etag(user.version);
        Ok(UserWritten::Ok(Json(user.into()), tag))
    }

    /// Delete a user
    ///
    /// A user who has orders (even cancelled ones) cannot be deleted: orders are records. Their
    /// sessions end with them.
    #[oai(path = "/v1/users/:id", method = "delete", operation_id = "deleteUser")]
    async fn delete(
        &self,
        state: Data<&Arc<AppState>>,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Deletes only if it names the current `ETag` (else 412).
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<Deleted, Failure<DeleteFailures>> {
        access::see_user(&auth.0, id.0)?;
        let expected = conditional::if_match(if_match.0.as_deref());
        state.users.delete(id.0, expected.as_deref()).await?;
        Ok(Deleted::NoContent)
    }
}

impl UsersApi {
    /// A wrong or missing `current_password` is a 422 naming it (API.md, Users).
    async fn check_current_password(
        &self,
        state: &AppState,
        id: Uuid,
        current: &str,
    ) -> Result<(), ApiError> {
        let user = state.users.get(id).await?;
        let email = Email::parse(&user.email).map_err(|why| ApiError::Internal {
            failure: None,
            detail: why,
        })?;
        let Some((_, hash)) = state.users.credentials(&email).await? else {
            return Err(ApiError::not_found());
        };
        if state
            .hasher
            .verify(&hash, current, middleware::deadline())
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::validation(
                "current_password",
                "is not the current password",
            ))
        }
    }
}

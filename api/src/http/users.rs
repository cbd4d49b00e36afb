//! `/v1/users`

use std::sync::Arc;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use uuid::Uuid;

use super::body::{JsonBody, present};
use super::error::{
    ApiError, CreateFailures, DeleteFailures, Failure, ListFailures, ReadFailures, UpdateFailures,
};
use super::pagination::{page_of, page_request};
use super::timestamp::Timestamp;
use super::{AppState, Tag};
use crate::domain::{Email, Password, UserName, UserStatus, Validator};
use crate::repo::users::{NewUser, User, UserChanges, UserFilter};

/// A user. The password is never returned.
#[derive(Object)]
#[oai(rename = "User")]
pub struct UserDto {
    #[oai(read_only)]
    pub id: Uuid,
    pub name: String,
    /// Lower-cased as stored.
    pub email: String,
    pub status: UserStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<User> for UserDto {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            name: user.name,
            email: user.email,
            status: user.status,
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
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// A valid address of at most 254 characters; unique regardless of case.
    #[oai(validator(min_length = 3, max_length = 254))]
    pub email: String,
    /// 8–128 characters; stored only as an Argon2id hash.
    #[oai(validator(min_length = 8, max_length = 128), write_only)]
    pub password: String,
    /// Defaults to `active`.
    #[serde(default, deserialize_with = "present")]
    pub status: Option<UserStatus>,
}

/// Any subset of the fields; `{}` changes nothing.
#[derive(Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "UpdateUser")]
pub struct UpdateUserRequest {
    #[serde(default, deserialize_with = "present")]
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[oai(validator(min_length = 3, max_length = 254))]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[oai(validator(min_length = 8, max_length = 128), write_only)]
    pub password: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub status: Option<UserStatus>,
}

#[derive(ApiResponse)]
pub enum UserCreated {
    /// The user was created.
    #[oai(status = 201)]
    Created(
        Json<UserDto>,
        /// The new user's URL.
        #[oai(header = "Location")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum Deleted {
    /// Deleted.
    #[oai(status = 204)]
    NoContent,
}

pub struct UsersApi(pub Arc<AppState>);

#[OpenApi(tag = "Tag::Users")]
impl UsersApi {
    /// Create a user
    #[oai(path = "/v1/users", method = "post", operation_id = "createUser")]
    async fn create(
        &self,
        body: JsonBody<CreateUserRequest>,
    ) -> Result<UserCreated, Failure<CreateFailures>> {
        let request = body.0;
        let mut v = Validator::default();
        let name = v.check("name", request.name.as_str(), UserName::parse);
        let email = v.check("email", request.email.as_str(), Email::parse);
        let password = v.check("password", request.password, Password::parse);
        let (name, email, password) = v
            .finish(|| Some((name?, email?, password?)))
            .map_err(ApiError::Validation)?;
        let password = password.hash().await.map_err(internal)?;
        let user = self
            .0
            .users
            .create(NewUser {
                name,
                email,
                password,
                status: request.status.unwrap_or(UserStatus::Active),
            })
            .await?;
        let location = format!("/v1/users/{}", user.id);
        Ok(UserCreated::Created(Json(user.into()), location))
    }

    /// Get a user
    #[oai(path = "/v1/users/:id", method = "get", operation_id = "getUser")]
    async fn get(&self, id: Path<Uuid>) -> Result<Json<UserDto>, Failure<ReadFailures>> {
        Ok(Json(self.0.users.get(id.0).await?.into()))
    }

    /// List users, newest first
    ///
    /// Page mode (`page`, with totals) or keyset mode (`cursor` from a previous `next_cursor`).
    #[oai(path = "/v1/users", method = "get", operation_id = "listUsers")]
    async fn list(
        &self,
        /// 1-based page number (page mode; not with `cursor`).
        #[oai(validator(minimum(value = "1")))]
        page: Query<Option<u64>>,
        /// Items per page.
        #[oai(
            default = "default_per_page",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        per_page: Query<u64>,
        /// Opaque cursor from `next_cursor` (keyset mode; not with `page`).
        cursor: Query<Option<String>>,
        /// Only users with this status.
        status: Query<Option<UserStatus>>,
        /// Only the user with this email (exact, case-insensitive).
        email: Query<Option<String>>,
    ) -> Result<Json<UserPage>, Failure<ListFailures>> {
        let request = page_request("users", page.0, Some(per_page.0), cursor.0.as_deref())?;
        let filter = UserFilter {
            status: status.0,
            email: email.0,
        };
        let users = self.0.users.list(filter, request).await?;
        Ok(Json(UserPage::of("users", request, users)))
    }

    /// Change a user
    ///
    /// Only the fields sent change; `updated_at` moves when any is sent. `{}` returns the user
    /// unchanged. On any error nothing changes.
    #[oai(path = "/v1/users/:id", method = "patch", operation_id = "updateUser")]
    async fn update(
        &self,
        id: Path<Uuid>,
        body: JsonBody<UpdateUserRequest>,
    ) -> Result<Json<UserDto>, Failure<UpdateFailures>> {
        let request = body.0;
        let mut v = Validator::default();
        let name = v.check_opt("name", request.name.as_deref(), UserName::parse);
        let email = v.check_opt("email", request.email.as_deref(), Email::parse);
        let password = v.check_opt("password", request.password, Password::parse);
        let (name, email, password) = v
            .finish(|| Some((name?, email?, password?)))
            .map_err(ApiError::Validation)?;
        let password = match password {
            Some(password) => Some(password.hash().await.map_err(internal)?),
            None => None,
        };
        let changes = UserChanges {
            name,
            email,
            password,
            status: request.status,
        };
        Ok(Json(self.0.users.update(id.0, changes).await?.into()))
    }

    /// Delete a user
    ///
    /// A user who has orders (even cancelled ones) cannot be deleted: orders are records.
    #[oai(path = "/v1/users/:id", method = "delete", operation_id = "deleteUser")]
    async fn delete(&self, id: Path<Uuid>) -> Result<Deleted, Failure<DeleteFailures>> {
        self.0.users.delete(id.0).await?;
        Ok(Deleted::NoContent)
    }
}

pub fn default_per_page() -> u64 {
    super::pagination::DEFAULT_PER_PAGE
}

fn internal(detail: String) -> ApiError {
    ApiError::Internal {
        failure: None,
        detail,
    }
}

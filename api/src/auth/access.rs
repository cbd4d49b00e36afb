//! Who may do what: the table in API.md, one function per operation, and nowhere else. A resource
//! the caller may not see is 404 (its existence is not revealed); an operation the caller's role
//! may not perform is 403.

use uuid::Uuid;

use super::{AuthError, Caller};
use crate::domain::OrderStatus;

/// `POST /v1/users`: anyone may sign up; only an admin may choose `status` or `role`.
pub fn create_user(caller: Option<&Caller>, sets_status_or_role: bool) -> Result<(), AuthError> {
    if sets_status_or_role && !caller.is_some_and(Caller::is_admin) {
        return Err(AuthError::Forbidden("only an admin may set status or role"));
    }
    Ok(())
}

/// `GET /v1/users`: admins only.
pub fn list_users(caller: &Caller) -> Result<(), AuthError> {
    admin_only(caller, "only an admin may list users")
}

/// `GET`/`DELETE /v1/users/{id}`, `GET /v1/users/{id}/orders`: the user themself or an admin.
pub fn see_user(caller: &Caller, id: Uuid) -> Result<(), AuthError> {
    if caller.is_admin() || caller.user_id == id {
        Ok(())
    } else {
        Err(AuthError::Hidden)
    }
}

/// What a `PATCH /v1/users/{id}` asks for, as far as access is concerned.
pub struct UserChange {
    pub password: bool,
    pub status_or_role: bool,
}

/// How a permitted user change must be carried out.
pub struct UserChangeRules {
    /// A password change by the user themself must prove the current password.
    pub needs_current_password: bool,
    /// The session to keep through a password change (the caller's own). A change of the
    /// caller's own status or role ends every session, theirs included: a demoted or suspended
    /// admin's token must not keep what it allowed.
    pub keep_session: Option<String>,
}

/// `PATCH /v1/users/{id}`: the user themself (not `status` or `role`) or an admin.
pub fn change_user(
    caller: &Caller,
    id: Uuid,
    change: &UserChange,
) -> Result<UserChangeRules, AuthError> {
    see_user(caller, id)?;
    let own = caller.user_id == id;
    if change.status_or_role && !caller.is_admin() {
        return Err(AuthError::Forbidden(
            "only an admin may change status or role",
        ));
    }
    Ok(UserChangeRules {
        needs_current_password: own && change.password,
        keep_session: (own && !change.status_or_role).then(|| caller.token_hash.clone()),
    })
}

/// `POST`, `PATCH`, `DELETE /v1/products…`: admins only.
pub fn manage_products(caller: &Caller) -> Result<(), AuthError> {
    admin_only(caller, "only an admin may change the catalogue")
}

/// `POST /v1/orders`: a customer orders for themself; an admin for anyone, naming them. Returns
/// whom the order is for.
pub fn place_order(caller: &Caller, user_id: Option<Uuid>) -> Result<Uuid, AuthError> {
    match (caller.is_admin(), user_id) {
        (true, Some(user_id)) => Ok(user_id),
        (true, None) => Err(AuthError::Invalid {
            field: "user_id",
            message: "is required when an admin places an order",
        }),
        (false, None) => Ok(caller.user_id),
        (false, Some(user_id)) if user_id == caller.user_id => Ok(user_id),
        (false, Some(_)) => Err(AuthError::Forbidden(
            "a customer may only place orders for themself",
        )),
    }
}

/// `GET /v1/orders/{id}`: the order's owner or an admin.
pub fn see_order(caller: &Caller, owner: Uuid) -> Result<(), AuthError> {
    see_user(caller, owner)
}

/// `PATCH /v1/orders/{id}`: an admin makes any allowed transition; the owner may only cancel.
pub fn change_order(caller: &Caller, owner: Uuid, to: OrderStatus) -> Result<(), AuthError> {
    see_order(caller, owner)?;
    if caller.is_admin() || to == OrderStatus::Cancelled {
        Ok(())
    } else {
        Err(AuthError::Forbidden(
            "a customer may only cancel their orders",
        ))
    }
}

/// `GET /v1/events`: admins only (the feed carries every user's data).
pub fn read_events(caller: &Caller) -> Result<(), AuthError> {
    admin_only(caller, "only an admin may read the change feed")
}

fn admin_only(caller: &Caller, why: &'static str) -> Result<(), AuthError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(AuthError::Forbidden(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserRole;

    fn caller(role: UserRole) -> Caller {
        Caller {
            user_id: Uuid::now_v7(),
            role,
            token_hash: "h".repeat(64),
        }
    }

    #[test]
    fn customers_see_only_themselves_and_admins_see_everyone() {
        let customer = caller(UserRole::Customer);
        let admin = caller(UserRole::Admin);
        let other = Uuid::now_v7();
        assert!(see_user(&customer, customer.user_id).is_ok());
        assert!(matches!(see_user(&customer, other), Err(AuthError::Hidden)));
        assert!(see_user(&admin, other).is_ok());
    }

    #[test]
    fn customers_order_for_themselves_and_may_only_cancel() {
        let customer = caller(UserRole::Customer);
        let admin = caller(UserRole::Admin);
        let other = Uuid::now_v7();
        assert_eq!(place_order(&customer, None).unwrap(), customer.user_id);
        assert!(matches!(
            place_order(&customer, Some(other)),
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(place_order(&admin, Some(other)).unwrap(), other);
        assert!(matches!(
            place_order(&admin, None),
            Err(AuthError::Invalid { .. })
        ));
        let own = customer.user_id;
        assert!(change_order(&customer, own, OrderStatus::Cancelled).is_ok());
        assert!(matches!(
            change_order(&customer, own, OrderStatus::Paid),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            change_order(&customer, other, OrderStatus::Cancelled),
            Err(AuthError::Hidden)
        ));
        assert!(change_order(&admin, other, OrderStatus::Shipped).is_ok());
    }

    #[test]
    fn only_admins_choose_status_or_role_and_self_service_password_changes_prove_the_old_one() {
        let customer = caller(UserRole::Customer);
        let admin = caller(UserRole::Admin);
        assert!(create_user(None, false).is_ok());
        assert!(create_user(None, true).is_err());
        assert!(create_user(Some(&customer), true).is_err());
        assert!(create_user(Some(&admin), true).is_ok());
        let password = UserChange {
            password: true,
            status_or_role: false,
        };
        let rules = change_user(&customer, customer.user_id, &password).unwrap();
        assert!(rules.needs_current_password);
        assert_eq!(rules.keep_session, Some(customer.token_hash.clone()));
        let rules = change_user(&admin, customer.user_id, &password).unwrap();
        assert!(!rules.needs_current_password);
        assert_eq!(rules.keep_session, None);
        let status = UserChange {
            password: false,
            status_or_role: true,
        };
        assert!(matches!(
            change_user(&customer, customer.user_id, &status),
            Err(AuthError::Forbidden(_))
        ));
        // An admin's own status or role change ends their own session too.
        let rules = change_user(&admin, admin.user_id, &status).unwrap();
        assert_eq!(rules.keep_session, None);
        let rules = change_user(&admin, admin.user_id, &password).unwrap();
        assert_eq!(rules.keep_session, Some(admin.token_hash.clone()));
    }
}

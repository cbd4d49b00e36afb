//! The HTTP faces of the domain's enums: the same values, named and documented for OpenAPI here,
//! so that `domain` knows nothing of poem.

use crate::domain::{OrderStatus, UserRole, UserStatus};

/// An enum as the API shows it, converted to and from its domain twin variant by variant.
macro_rules! api_enum {
    ($(#[$doc:meta])* $api:ident = $domain:ident as $name:literal { $($variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, poem_openapi::Enum,
        )]
        #[serde(rename_all = "lowercase")]
        #[oai(rename = $name, rename_all = "lowercase")]
        pub enum $api {
            $($variant),+
        }

        impl From<$domain> for $api {
            fn from(value: $domain) -> Self {
                match value {
                    $($domain::$variant => Self::$variant),+
                }
            }
        }

        impl From<$api> for $domain {
            fn from(value: $api) -> Self {
                match value {
                    $($api::$variant => Self::$variant),+
                }
            }
        }
    };
}

api_enum! {
    /// `active` users may log in; `inactive` and `suspended` ones may not.
    UserStatusDto = UserStatus as "UserStatus" { Active, Inactive, Suspended }
}

api_enum! {
    /// `customer` acts on their own account and orders; `admin` on everything.
    UserRoleDto = UserRole as "UserRole" { Customer, Admin }
}

api_enum! {
    /// `pending → paid → shipped`; `pending` or `paid` → `cancelled`.
    OrderStatusDto = OrderStatus as "OrderStatus" { Pending, Paid, Shipped, Cancelled }
}

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

/// An RFC 3339 timestamp in UTC, always written with a `Z` and at most six fractional digits
/// (`2026-11-24T10:00:00.123456Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl From<DateTime<FixedOffset>> for Timestamp {
    fn from(value: DateTime<FixedOffset>) -> Self {
        Self(value.with_timezone(&Utc))
    }
}

impl Type for Timestamp {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl Timestamp {
    fn text(&self) -> String {
        // AutoSi writes 0, 3 or 6 digits as needed; stored values carry at most microseconds.
        self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl ToJSON for Timestamp {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.text()))
    }
}

/// The same text as `to_json`, for representations serialized without building a `Value`.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text())
    }
}

impl ParseFromJSON for Timestamp {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => DateTime::parse_from_rfc3339(&text)
                .map(Self::from)
                .map_err(ParseError::custom),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_end_in_z_with_at_most_microseconds() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:00:00.123456+00:00").unwrap();
        assert_eq!(
            Timestamp::from(t).to_json(),
            Some(Value::String("2026-11-24T10:00:00.123456Z".into()))
        );
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:00:00.120+00:00").unwrap();
        assert_eq!(
            Timestamp::from(t).to_json(),
            Some(Value::String("2026-11-24T10:00:00.120Z".into()))
        );
        let t = DateTime::parse_from_rfc3339("2026-11-24T12:00:00+02:00").unwrap();
        assert_eq!(
            serde_json::to_string(&Timestamp::from(t)).unwrap(),
            "\"2026-11-24T10:00:00Z\""
        );
    }
}

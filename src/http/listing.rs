//! One page of a newest-first listing (`GET /v1/streams`, `GET /v1/sessions`): the query
//! (`limit`, `before`: the last id of the previous page) and the body,
//! `{"object":"list","data":[…],"has_more","last_id"}`.

use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// The query of a newest-first listing (`GET /v1/streams`, `GET /v1/sessions`).
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub limit: Option<String>,
    pub before: Option<String>,
}

impl ListQuery {
    /// `limit`: 1 to 100, 20 if absent.
    pub fn limit(&self) -> Result<u32, ApiError> {
        match self.limit.as_deref() {
            None => Ok(20),
            Some(raw) => match raw.parse::<u32>() {
                Ok(n @ 1..=100) => Ok(n),
                _ => Err(ApiError::invalid(
                    "`limit` must be an integer from 1 to 100",
                )),
            },
        }
    }
}

impl ListQuery {
    /// `before` names nothing of the caller's `what`.
    pub fn unknown_before(&self, what: &str) -> ApiError {
        ApiError::invalid(format!(
            "`before` is not a {what}: {:?}",
            self.before.as_deref().unwrap_or_default()
        ))
    }
}

/// A page of a list, member for member.
#[derive(Serialize)]
pub struct Page<'a, T> {
    object: &'static str,
    data: Vec<T>,
    has_more: bool,
    last_id: Option<&'a str>,
}

impl<'a, T> Page<'a, T> {
    /// The page of `rows` (asked for `limit + 1`, so that one more says there are more):
    /// at most `limit` items, each rendered by `item`.
    pub fn of<R>(
        rows: &'a [R],
        limit: u32,
        id: impl Fn(&'a R) -> &'a str,
        item: impl Fn(&'a R) -> Result<T, ApiError>,
    ) -> Result<Self, ApiError> {
        let shown = &rows[..rows.len().min(limit as usize)];
        Ok(Page {
            object: "list",
            data: shown.iter().map(item).collect::<Result<_, _>>()?,
            has_more: rows.len() > shown.len(),
            last_id: shown.last().map(id),
        })
    }
}

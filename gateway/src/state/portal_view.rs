//! Read-only views of the gateway for the people's portal (`crate::portal`), for data the
//! rest of the gateway does not expose.

use super::Gateway;
use crate::store::usage::{UsageKey, UsageTotals};
use crate::store::StoreError;

impl Gateway {
    /// Token usage totals per `by` since `since` (RFC 3339 UTC, as usage rows are stored),
    /// straight from the store without waiting for queued rows (they land within ~200 ms).
    /// Blocking: one SQLite query over the `usage` table's time index.
    pub fn usage_totals_since(
        &self,
        by: UsageKey,
        since: &str,
    ) -> Result<Vec<UsageTotals>, StoreError> {
        self.store.usage_totals(by, since)
    }
}

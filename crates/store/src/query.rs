//! Listing queries both backends run: conditions with `?` placeholders and their values,
//! the filters the message, delivery and attempt listings share, and the page statement.
//! Each backend spells placeholders and a few conditions its own way ([`Dialect`]) and
//! binds the values.

use crate::{ListFilter, Listed, Page};
use hookline_core::delivery::DeliveryState;

/// A value a condition compares with.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    /// A list (SQLite binds it as JSON text, PostgreSQL as an array).
    Texts(Vec<String>),
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Text(text)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<Vec<String>> for Value {
    fn from(texts: Vec<String>) -> Value {
        Value::Texts(texts)
    }
}

/// What the backends spell differently.
pub struct Dialect {
    /// True when the JSON list column `channels` holds the one value `?`.
    pub channel_contains: &'static str,
    /// True when `event_type` is one of the list `?`.
    pub event_type_in: &'static str,
    /// True when the JSON list column `tags` holds the one value `?`.
    pub tag_contains: &'static str,
    /// The placeholder of the n-th value, from 1.
    pub placeholder: fn(usize) -> String,
}

/// A query under construction: a WHERE clause and its values.
#[derive(Default)]
pub struct Query {
    conditions: Vec<String>,
    values: Vec<Value>,
}

impl Query {
    /// The applications a listing shows: all but the internal operational one.
    pub fn apps_shown() -> Query {
        Query::new().and("id <> ?", crate::OPERATIONAL_APP_ID.to_owned())
    }

    pub fn new() -> Query {
        Query::default()
    }

    /// Adds a condition whose one `?` stands for `value`.
    pub fn and(mut self, condition: &str, value: impl Into<Value>) -> Query {
        self.conditions.push(condition.to_owned());
        self.values.push(value.into());
        self
    }

    /// The time window and status of a listing, on `time_column`.
    pub fn filtered(mut self, filter: &ListFilter, time_column: &str) -> Query {
        if let Some(before) = filter.before {
            self = self.and(&format!("{time_column} < ?"), before);
        }
        if let Some(after) = filter.after {
            self = self.and(&format!("{time_column} > ?"), after);
        }
        if let Some(status) = filter.status {
            // A deferred delivery is pending (`crate::DEFERRED`).
            let condition = match status {
                DeliveryState::Pending => format!("state IN (?, {})", crate::DEFERRED),
                _ => "state = ?".to_owned(),
            };
            self = self.and(&condition, status.code());
        }
        self
    }

    /// Attempts to one endpoint, or answered with a status of one class (Svix's
    /// `endpoint_id` and `status_code_class`).
    pub fn of_attempts(mut self, filter: &ListFilter) -> Query {
        if let Some(endpoint_id) = &filter.endpoint_id {
            self = self.and("endpoint_id = ?", endpoint_id.clone());
        }
        match filter.status_code_class {
            Some(0) => self.and("status_code = ?", 0),
            Some(class) => {
                self.and("status_code >= ?", i64::from(class)).and("status_code < ?", i64::from(class) + 100)
            }
            None => self,
        }
    }

    /// An application's messages as the message listing filters them.
    pub fn messages(app_id: &str, filter: &ListFilter, dialect: &Dialect) -> Query {
        let mut query = Query::new()
            .and("app_id = ?", app_id.to_owned())
            .filtered(&ListFilter { status: None, ..filter.clone() }, "created_at");
        if let Some(channel) = &filter.channel {
            query = query.and(dialect.channel_contains, channel.clone());
        }
        if let Some(types) = &filter.event_types {
            query = query.and(dialect.event_type_in, types.clone());
        }
        if let Some(tag) = &filter.tag {
            query = query.and(dialect.tag_contains, tag.clone());
        }
        query
    }

    /// The message-side filters of a listing of deliveries or attempts (rows of `table`,
    /// with a `msg_id`): the message's channel, event types and tag, read from each listed
    /// row's own message. (`msg_id IN (SELECT id FROM messages WHERE …)` read every
    /// message of every application, payloads included, for each filtered page.)
    pub fn of_messages(mut self, table: &str, filter: &ListFilter, dialect: &Dialect) -> Query {
        let conditions = [
            (dialect.channel_contains, filter.channel.clone().map(Value::from)),
            (dialect.event_type_in, filter.event_types.clone().map(Value::from)),
            (dialect.tag_contains, filter.tag.clone().map(Value::from)),
        ];
        for (condition, value) in conditions {
            if let Some(value) = value {
                let own = format!("messages.id = {table}.msg_id AND messages.app_id = {table}.app_id");
                self = self.and(&format!("EXISTS (SELECT 1 FROM messages WHERE {own} AND {condition})"), value);
            }
        }
        self
    }

    /// The time window of a listing of what messages became (their deliveries), on when the
    /// messages were created: by their ids, which sort by it (as retention's cutoff).
    pub fn messages_created(mut self, filter: &ListFilter) -> Query {
        if let Some(before) = filter.before {
            self = self.and("msg_id < ?", crate::retention_cutoff_id(before));
        }
        if let Some(after) = filter.after {
            self = self.and("msg_id >= ?", crate::retention_cutoff_id(after.saturating_add(1)));
        }
        self
    }

    /// `SELECT columns FROM table WHERE … ORDER BY order_column LIMIT page.limit + 1` (one row
    /// more than the page, to tell whether more follow) and its values in order.
    pub fn page_sql(
        self,
        dialect: &Dialect,
        columns: &str,
        table: &str,
        order_column: &str,
        page: &Page,
    ) -> (String, Vec<Value>) {
        let mut query = self;
        // A page backwards is read the other way from its iterator, then turned round
        // (`listed`).
        let descending = page.descending != page.backwards;
        if let Some(iterator) = &page.iterator {
            let op = if descending { "<" } else { ">" };
            query = query.and(&format!("{order_column} {op} ?"), iterator.clone());
        }
        let mut filter = String::new();
        for (n, condition) in query.conditions.iter().enumerate() {
            filter.push_str(if n == 0 { "WHERE " } else { " AND " });
            filter.push_str(&condition.replacen('?', &(dialect.placeholder)(n + 1), 1));
        }
        let direction = if descending { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {columns} FROM {table} {filter} ORDER BY {order_column} {direction} LIMIT {}",
            page.limit + 1
        );
        (sql, query.values)
    }
}

/// A page of at most `page.limit` of `items` (fetched one beyond it), and whether it ends
/// (for a page backwards: whether nothing comes before it).
pub fn listed<T>(mut items: Vec<T>, page: &Page) -> Listed<T> {
    let done = items.len() <= page.limit;
    items.truncate(page.limit);
    if page.backwards {
        items.reverse();
    }
    Listed { items, done }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUMBERED: Dialect = Dialect {
        channel_contains: "ch(?)",
        event_type_in: "et(?)",
        tag_contains: "tg(?)",
        placeholder: |n| format!("${n}"),
    };

    #[test]
    fn page_statements_table() {
        let page = |iterator: Option<&str>, descending| Page {
            limit: 2,
            iterator: iterator.map(str::to_owned),
            descending,
            backwards: false,
        };
        let filter = ListFilter { channel: Some("eu".into()), after: Some(5), ..Default::default() };
        let cases = [
            (Query::new(), page(None, false), "SELECT a FROM t  ORDER BY id ASC LIMIT 3", vec![]),
            (
                Query::messages("app_1", &filter, &NUMBERED),
                page(Some("msg_9"), true),
                "SELECT a FROM t WHERE app_id = $1 AND created_at > $2 AND ch($3) AND id < $4 ORDER BY id DESC LIMIT 3",
                vec![Value::Text("app_1".into()), Value::Int(5), Value::Text("eu".into()), Value::Text("msg_9".into())],
            ),
        ];
        for (query, page, sql, values) in cases {
            assert_eq!(query.page_sql(&NUMBERED, "a", "t", "id", &page), (sql.to_owned(), values));
        }
        let listed = listed(vec![1, 2, 3], &page(None, false));
        assert_eq!((listed.items, listed.done), (vec![1, 2], false));
    }
}

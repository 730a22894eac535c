//! Records and their subjects. A payload such as a CleverTap upload holds
//! many customers' records (`$.d[*]`), and a route's `subject` selector
//! names where each record keeps its customer's identifier
//! (`$.d[*].identity`). A record is the innermost array element that holds
//! the subject (the whole document when the subject is not in an array), so
//! that every field selected inside that element belongs to that customer,
//! and a field outside every record belongs to none.

use serde_json::Value;

use super::Selector;
use crate::pii::Pii;

/// The subject of each record of one document.
pub struct Subjects(Vec<(String, Pii)>);

impl Subjects {
    /// Finds each record's subject: a string, or a number's digits. Records
    /// without one (missing, null, empty, or not a scalar) have none.
    pub fn find(document: &Value, selector: &Selector) -> Self {
        let mut found: Vec<(String, Pii)> = Vec::new();
        for node in selector.path.query_located(document) {
            let text = match node.node() {
                Value::String(text) if !text.trim().is_empty() => text.clone(),
                Value::Number(number) => number.to_string(),
                _ => continue,
            };
            let pointer = node.location().to_json_pointer();
            let record = record_of(&pointer).to_owned();
            // One subject per record: the first match names it.
            if !found.iter().any(|(r, _)| *r == record) {
                found.push((record, Pii::new(text)));
            }
        }
        Self(found)
    }

    /// The subject of the field at `pointer`: that of the innermost record
    /// holding it.
    pub fn of(&self, pointer: &str) -> Option<&Pii> {
        self.0
            .iter()
            .filter(|(record, _)| contains(record, pointer))
            .max_by_key(|(record, _)| record.len())
            .map(|(_, subject)| subject)
    }

    /// The subject of the whole document (for query parameters), when the
    /// document is one record.
    pub fn of_document(&self) -> Option<&Pii> {
        self.0
            .iter()
            .find(|(record, _)| record.is_empty())
            .map(|(_, subject)| subject)
    }
}

/// The pointer of the record holding the value at `pointer`: up to its last
/// array index, or the whole document.
fn record_of(pointer: &str) -> &str {
    let mut end = 0;
    let mut at = 0;
    for segment in pointer.split('/').skip(1) {
        at += 1 + segment.len();
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            end = at;
        }
    }
    &pointer[..end]
}

/// True when `record` is `pointer` or one of its ancestors.
fn contains(record: &str, pointer: &str) -> bool {
    pointer
        .strip_prefix(record)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_record_is_the_innermost_array_element_holding_the_subject() {
        assert_eq!(record_of("/d/3/identity"), "/d/3");
        assert_eq!(record_of("/d/3/profile/identity"), "/d/3");
        assert_eq!(record_of("/batches/1/d/12/identity"), "/batches/1/d/12");
        assert_eq!(record_of("/identity"), "");
    }

    #[test]
    fn each_field_gets_the_subject_of_its_own_record() {
        let document = json!({"d": [
            {"identity": "CUST-1", "profileData": {"Email": "a@example.com"}},
            {"profileData": {"Email": "nobody@example.com"}},
            {"identity": 42, "evtData": {"Phone": "+15550100"}},
            {"identity": "", "profileData": {"Email": "blank@example.com"}},
        ], "meta": {"Email": "outside@example.com"}});
        let subjects = Subjects::find(&document, &Selector::parse("$.d[*].identity").unwrap());
        let of = |pointer: &str| subjects.of(pointer).map(|s| s.expose().to_owned());
        assert_eq!(of("/d/0/profileData/Email").as_deref(), Some("CUST-1"));
        assert_eq!(of("/d/1/profileData/Email"), None);
        assert_eq!(of("/d/2/evtData/Phone").as_deref(), Some("42"));
        assert_eq!(of("/d/3/profileData/Email"), None);
        assert_eq!(of("/meta/Email"), None);
        // `/d/1` is not inside `/d/10`'s record, nor the other way round.
        assert_eq!(of("/d/10/x"), None);
        assert!(subjects.of_document().is_none());
    }

    #[test]
    fn a_single_record_document_has_a_document_subject() {
        let document = json!({"identity": "CUST-7", "Email": "x@example.com"});
        let subjects = Subjects::find(&document, &Selector::parse("$.identity").unwrap());
        assert_eq!(subjects.of("/Email").map(|s| s.expose()), Some("CUST-7"));
        assert_eq!(subjects.of_document().map(|s| s.expose()), Some("CUST-7"));
    }
}

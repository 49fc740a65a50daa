//! The input's other fields as parquet columns (`predict --input`'s parquet output): each
//! column typed from the first rows written (booleans, integers, numbers, else text: strings as
//! they are, lists and objects as JSON text); a row without the field holds null there.

use anyhow::{anyhow, Result};
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The type of a passed-through column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Float,
    Text,
}

impl Kind {
    /// The narrowest kind holding `v` (`None`: null, any kind holds it).
    fn of(v: &Value) -> Option<Self> {
        match v {
            Value::Null => None,
            Value::Bool(_) => Some(Kind::Bool),
            Value::Number(n) if n.is_i64() => Some(Kind::Int),
            Value::Number(_) => Some(Kind::Float),
            _ => Some(Kind::Text),
        }
    }

    /// The narrowest kind holding values of both.
    fn join(self, other: Self) -> Self {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Text,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Text => DataType::Utf8,
        }
    }

    fn values(self) -> &'static str {
        match self {
            Kind::Bool => "booleans",
            Kind::Int => "integers",
            Kind::Float => "numbers",
            Kind::Text => "text",
        }
    }
}

/// A passed-through column.
#[derive(Debug, Clone)]
pub(super) struct Column {
    name: String,
    kind: Kind,
}

impl Column {
    /// The columns of the fields of `rows`, in the order first seen, but those `taken`.
    pub(super) fn infer(rows: &[&Map<String, Value>], taken: impl Fn(&str) -> bool) -> Vec<Column> {
        let mut seen: Vec<(String, Option<Kind>)> = Vec::new();
        for &row in rows {
            for (name, v) in row {
                if taken(name) {
                    continue;
                }
                let kind = Kind::of(v);
                match seen.iter_mut().find(|(n, _)| n == name) {
                    Some((_, known)) => {
                        *known = match (*known, kind) {
                            (Some(a), Some(b)) => Some(a.join(b)),
                            (a, b) => a.or(b),
                        }
                    }
                    None => seen.push((name.clone(), kind)),
                }
            }
        }
        seen.into_iter()
            .map(|(name, kind)| Column {
                name,
                kind: kind.unwrap_or(Kind::Text),
            })
            .collect()
    }

    /// The arrow field (nullable: a row may lack the field).
    pub(super) fn field(&self) -> Field {
        Field::new(self.name.clone(), self.kind.data_type(), true)
    }

    /// The column's values of `rows` (input row index, fields); a value its type does not hold
    /// is an error naming the row and the field.
    pub(super) fn array(&self, rows: &[(usize, &Map<String, Value>)]) -> Result<ArrayRef> {
        let values = rows
            .iter()
            .map(|&(row, m)| (row, m.get(&self.name).filter(|v| !v.is_null())));
        let misfit = |row: usize, v: &Value| {
            anyhow!(
                "input row {}: field `{}` is {v}, but its column holds {} (typed from the first rows; a .jsonl output takes any value)",
                row + 1,
                self.name,
                self.kind.values()
            )
        };
        let array: ArrayRef = match self.kind {
            Kind::Bool => Arc::new(BooleanArray::from(typed(values, Value::as_bool, misfit)?)),
            Kind::Int => Arc::new(Int64Array::from(typed(values, Value::as_i64, misfit)?)),
            Kind::Float => Arc::new(Float64Array::from(typed(values, Value::as_f64, misfit)?)),
            Kind::Text => Arc::new(StringArray::from(
                values
                    .map(|(_, v)| {
                        v.map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                    })
                    .collect::<Vec<Option<String>>>(),
            )),
        };
        Ok(array)
    }
}

/// A column's values through `get`, a value `get` refuses named by `misfit`.
fn typed<'a, T>(
    values: impl Iterator<Item = (usize, Option<&'a Value>)>,
    get: impl Fn(&Value) -> Option<T>,
    misfit: impl Fn(usize, &Value) -> anyhow::Error,
) -> Result<Vec<Option<T>>> {
    values
        .map(|(row, v)| v.map(|v| get(v).ok_or_else(|| misfit(row, v))).transpose())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn passed_through_columns_are_typed_from_the_first_rows() {
        let rows = [
            fields(json!({"id": 1, "ok": true, "w": 0.5, "tags": ["a"], "label": "x"})),
            fields(json!({"id": 2, "w": 2, "note": "n"})),
        ];
        let refs: Vec<&Map<String, Value>> = rows.iter().collect();
        let cols = Column::infer(&refs, |n| n == "label");
        let kinds: Vec<(&str, Kind)> = cols.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert!(kinds.contains(&("id", Kind::Int)), "{kinds:?}");
        assert!(kinds.contains(&("ok", Kind::Bool)), "{kinds:?}");
        assert!(kinds.contains(&("w", Kind::Float)), "{kinds:?}");
        assert!(kinds.contains(&("tags", Kind::Text)), "{kinds:?}");
        assert!(kinds.contains(&("note", Kind::Text)), "{kinds:?}");
        assert!(!kinds.iter().any(|k| k.0 == "label"), "{kinds:?}");
        let id = cols.iter().find(|c| c.name == "id").unwrap();
        let indexed: Vec<(usize, &Map<String, Value>)> = rows.iter().enumerate().collect();
        let a = id.array(&indexed).unwrap();
        assert_eq!((a.len(), a.null_count()), (2, 0));
        let ok = cols.iter().find(|c| c.name == "ok").unwrap();
        assert_eq!(ok.array(&indexed).unwrap().null_count(), 1);
        let later = fields(json!({"id": "seven"}));
        let e = format!("{:#}", id.array(&[(0, &later)]).unwrap_err());
        assert!(
            e.contains("input row 1: field `id` is \"seven\", but its column holds integers"),
            "{e}"
        );
    }
}

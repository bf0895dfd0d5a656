//! Where two JSON values first differ, walking objects key by key in name order. One walk for
//! both uses: an index's mapping against its definition (`sink`), and a stored document against
//! the one Postgres gives (`verify`); each says what counts as equal for everything else.

use serde_json::Value;

/// The first place the values differ: the keys leading to it, and what each side holds there
/// (`None`: the key is absent on that side).
#[derive(Debug, PartialEq)]
pub struct Difference<'a> {
    pub path: Vec<&'a str>,
    pub expected: Option<&'a Value>,
    pub found: Option<&'a Value>,
}

/// `None` when `found` matches `expected`: objects key by key (a key on either side only is a
/// difference), anything else by `same`.
pub fn first_difference<'a>(expected: &'a Value, found: &'a Value, same: fn(&Value, &Value) -> bool) -> Option<Difference<'a>> {
    let mut path = Vec::new();
    walk(expected, found, same, &mut path)
}

fn walk<'a>(expected: &'a Value, found: &'a Value, same: fn(&Value, &Value) -> bool, path: &mut Vec<&'a str>) -> Option<Difference<'a>> {
    let (Value::Object(e), Value::Object(f)) = (expected, found) else {
        return (!same(expected, found)).then(|| Difference { path: path.clone(), expected: Some(expected), found: Some(found) });
    };
    let mut keys: Vec<&'a String> = e.keys().chain(f.keys().filter(|k| !e.contains_key(*k))).collect();
    keys.sort();
    for key in keys {
        path.push(key);
        let difference = match (e.get(key), f.get(key)) {
            (Some(ev), Some(fv)) => walk(ev, fv, same, path),
            (ev, fv) => Some(Difference { path: path.clone(), expected: ev, found: fv }),
        };
        if difference.is_some() {
            return difference;
        }
        path.pop();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_difference_in_name_order_with_its_path() {
        let e = json!({"b": {"x": 1, "y": 2}, "a": 1});
        assert_eq!(first_difference(&e, &e.clone(), |a, b| a == b), None);
        let changed = json!({"a": 1, "b": {"x": 1, "y": 3}});
        let d = first_difference(&e, &changed, |a, b| a == b).unwrap();
        assert_eq!((d.path, d.expected, d.found), (vec!["b", "y"], Some(&json!(2)), Some(&json!(3))));
        let missing = json!({"a": 1, "b": {"x": 1}});
        let d = first_difference(&e, &missing, |a, b| a == b).unwrap();
        assert_eq!((d.path, d.found), (vec!["b", "y"], None));
        let extra = json!({"a": 1, "b": {"x": 1, "y": 2}, "c": 0});
        let d = first_difference(&e, &extra, |a, b| a == b).unwrap();
        assert_eq!((d.path, d.expected), (vec!["c"], None));
        // Leaves are the caller's to compare.
        assert_eq!(first_difference(&json!({"n": 1}), &json!({"n": "1"}), |a, b| a.to_string().trim_matches('"') == b.to_string().trim_matches('"')), None);
    }
}

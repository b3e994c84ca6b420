//! Writing a JSON object for a task's `--json` report, without dependencies.

use std::fmt::Write;

/// A JSON object under construction.
///
/// ```
/// use corral_guest::json::Object;
/// let json = Object::new()
///     .number("mse", 0.25)
///     .numbers("w", &[1.0, -2.5])
///     .integer("rows", 3)
///     .string("name", "iris \"v1\"")
///     .optional_number("test_mse", None)
///     .finish();
/// assert_eq!(json, r#"{"mse":0.25,"w":[1,-2.5],"rows":3,"name":"iris \"v1\"","test_mse":null}"#);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Object {
    buf: String,
}

impl Object {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(mut self, key: &str) -> Self {
        self.buf.push(if self.buf.is_empty() { '{' } else { ',' });
        write_string(&mut self.buf, key);
        self.buf.push(':');
        self
    }

    /// A number; NaN and infinities become `null`.
    pub fn number(self, key: &str, value: f64) -> Self {
        let mut this = self.key(key);
        write_number(&mut this.buf, value);
        this
    }

    /// A number, or `null`.
    pub fn optional_number(self, key: &str, value: Option<f64>) -> Self {
        match value {
            Some(value) => self.number(key, value),
            None => self.raw(key, "null"),
        }
    }

    /// An integer.
    pub fn integer(self, key: &str, value: i64) -> Self {
        let mut this = self.key(key);
        let _ = write!(this.buf, "{value}");
        this
    }

    /// A string.
    pub fn string(self, key: &str, value: &str) -> Self {
        let mut this = self.key(key);
        write_string(&mut this.buf, value);
        this
    }

    /// A boolean.
    pub fn boolean(self, key: &str, value: bool) -> Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// An array of numbers.
    pub fn numbers(self, key: &str, values: &[f64]) -> Self {
        let mut this = self.key(key);
        this.buf.push_str(&array(values));
        this
    }

    /// Already-encoded JSON (an array of objects, a nested object...).
    pub fn raw(self, key: &str, json: &str) -> Self {
        let mut this = self.key(key);
        this.buf.push_str(json);
        this
    }

    /// The encoded object.
    pub fn finish(mut self) -> String {
        if self.buf.is_empty() {
            self.buf.push('{');
        }
        self.buf.push('}');
        self.buf
    }
}

/// A JSON array of numbers (NaN and infinities as `null`), e.g. for nesting with
/// [`Object::raw`].
pub fn array(values: &[f64]) -> String {
    let mut buf = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        write_number(&mut buf, *v);
    }
    buf.push(']');
    buf
}

fn write_number(buf: &mut String, value: f64) {
    if value.is_finite() {
        let _ = write!(buf, "{value}");
    } else {
        buf.push_str("null");
    }
}

fn write_string(buf: &mut String, value: &str) {
    buf.push('"');
    for c in value.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_and_escapes() {
        assert_eq!(Object::new().finish(), "{}");
        assert_eq!(
            Object::new()
                .string("k", "a\u{1}\\\n")
                .number("n", f64::NAN)
                .boolean("b", true)
                .finish(),
            r#"{"k":"a\u0001\\\n","n":null,"b":true}"#
        );
    }
}

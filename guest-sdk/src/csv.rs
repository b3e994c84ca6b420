//! Numeric CSV for ML tasks: an optional header row, then rows of numbers whose last column is
//! the target. Malformed input is rejected with an error naming the line.

use std::fmt;

/// A parsed data set: `rows` rows of `features` numbers plus one target each.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Column names: the features', then the target's. From the header row, or `x1..xn, y`.
    pub names: Vec<String>,
    /// Feature columns per row.
    pub features: usize,
    /// Features, row-major: row `i` is `x[i * features..(i + 1) * features]`.
    pub x: Vec<f64>,
    /// Targets, one per row.
    pub y: Vec<f64>,
}

impl Dataset {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// The features of row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.features..(i + 1) * self.features]
    }

    /// The feature names (without the target's).
    pub fn feature_names(&self) -> &[String] {
        &self.names[..self.features]
    }

    /// The target column's name.
    pub fn target_name(&self) -> &str {
        &self.names[self.features]
    }

    /// Splits the row indices into (train, test) at random, seeded with `seed`: the test set is
    /// `test_fraction` of the rows, rounded (0 gives no test rows). Each set is in row order.
    ///
    /// ```
    /// let data = corral_guest::csv::parse("1,0\n2,0\n3,1\n4,1\n5,1\n").unwrap();
    /// let (train, test) = data.split(0.4, 7).unwrap();
    /// assert_eq!((train.len(), test.len()), (3, 2));
    /// assert!(data.split(1.0, 7).is_err());
    /// ```
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>), String> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(format!("--test-fraction {test_fraction} is outside [0, 1)"));
        }
        let mut order: Vec<usize> = (0..self.rows()).collect();
        crate::rng::Rng::new(seed).shuffle(&mut order);
        let test_rows = (self.rows() as f64 * test_fraction).round() as usize;
        let mut train = order.split_off(test_rows);
        // Which rows go where is random; visiting them in file order keeps memory access
        // sequential, which matters on large data sets.
        train.sort_unstable();
        order.sort_unstable();
        Ok((train, order))
    }
}

/// Why a CSV was rejected, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvError {
    /// 1-based line number (0 when the problem is the whole input).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for CsvError {}

/// So that `?` works in a task's `fn run() -> Result<(), String>`.
impl From<CsvError> for String {
    fn from(error: CsvError) -> Self {
        error.to_string()
    }
}

/// Exact powers of ten for the fast path of [`parse_row`]: all up to 1e22 are exact in an f64.
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses numeric CSV. The first non-blank line is a header when any of its fields is not a
/// number. Blank lines are skipped; `\r\n` line ends are accepted.
///
/// ```
/// let data = corral_guest::csv::parse("a,b,y\n1,2,3\n4,5,6\n").unwrap();
/// assert_eq!((data.rows(), data.features), (2, 2));
/// assert_eq!(data.row(1), &[4.0, 5.0]);
/// let err = corral_guest::csv::parse("a,b,y\n1,2,3\n4,x,6\n").unwrap_err();
/// assert_eq!(err.to_string(), "line 3: field 2 \"x\" is not a finite number");
/// ```
pub fn parse(text: &str) -> Result<Dataset, CsvError> {
    // One pass over the bytes with plain loops: `str::split` costs several times more per
    // field in wasm, and a CSV is mostly short fields.
    let bytes = text.as_bytes();
    let mut names: Option<Vec<String>> = None;
    let mut columns = 0;
    let mut first_line = 0;
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut line = 0;
    let mut pos = 0;
    while pos < bytes.len() {
        line += 1;
        let mut end = pos;
        while end < bytes.len() && bytes[end] != b'\n' {
            end += 1;
        }
        let mut row = &bytes[pos..end];
        pos = end + 1;
        if let [rest @ .., b'\r'] = row {
            row = rest;
        }
        if row.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if columns == 0 {
            // The first row: its width, and whether it is a header (rare path, so str is fine).
            let first = std::str::from_utf8(row).unwrap_or_default();
            columns = first.split(',').count();
            first_line = line;
            if columns < 2 {
                return Err(CsvError {
                    line,
                    message: "need at least two columns: features, then the target".into(),
                });
            }
            if first.split(',').any(|f| number(f).is_none()) {
                names = Some(
                    first
                        .split(',')
                        .map(|f| f.trim().trim_matches('"').to_string())
                        .collect(),
                );
                continue;
            }
        }
        parse_row(row, line, columns, first_line, &mut x, &mut y)?;
    }
    if y.is_empty() {
        return Err(CsvError {
            line: 0,
            message: "no data rows".into(),
        });
    }
    let features = columns - 1;
    let names = names.unwrap_or_else(|| {
        (1..=features)
            .map(|i| format!("x{i}"))
            .chain(std::iter::once("y".to_string()))
            .collect()
    });
    Ok(Dataset {
        names,
        features,
        x,
        y,
    })
}

/// Parses one data row into `x` (features) and `y` (target) in a single pass over its bytes.
///
/// Plain decimals (`-12.345`, `7`, `.5`) take Clinger's fast path: their digits are
/// accumulated as they are scanned, and when they form an integer below 2^53 (at most 15
/// digits) the value is that integer divided by an exact power of ten, which one IEEE division
/// rounds correctly: the same bits as `str::parse`. Any other field (spaces, exponents, `inf`,
/// more digits, garbage) goes to [`number`], which gives `str::parse`'s value or the error.
/// `str::parse` alone handles everything but needs 64x64->128-bit multiplications, which wasm32
/// emulates; this path reads a numeric CSV about twice as fast in wasm.
fn parse_row(
    row: &[u8],
    line: usize,
    columns: usize,
    first_line: usize,
    x: &mut Vec<f64>,
    y: &mut Vec<f64>,
) -> Result<(), CsvError> {
    let mut field = 0;
    let mut start = 0;
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;
    let mut fraction_digits = 0usize;
    let mut seen_point = false;
    let mut negative = false;
    let mut plain = true;
    let mut i = 0;
    loop {
        let b = if i < row.len() { row[i] } else { b',' };
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                digits += 1;
                fraction_digits += seen_point as usize;
            }
            b'.' if !seen_point => seen_point = true,
            b'-' if i == start => negative = true,
            b'+' if i == start => {}
            b',' => {
                field += 1;
                if field > columns {
                    break;
                }
                let value = if plain && digits > 0 && digits <= 15 {
                    let v = mantissa as f64 / POWERS_OF_TEN[fraction_digits];
                    if negative {
                        -v
                    } else {
                        v
                    }
                } else {
                    // `row` is a str cut at ASCII bytes, so the field is valid UTF-8.
                    let text = std::str::from_utf8(&row[start..i]).unwrap_or_default();
                    number(text).ok_or_else(|| CsvError {
                        line,
                        message: format!("field {field} {:?} is not a finite number", text.trim()),
                    })?
                };
                if field == columns {
                    y.push(value);
                } else {
                    x.push(value);
                }
                if i >= row.len() {
                    break;
                }
                start = i + 1;
                mantissa = 0;
                digits = 0;
                fraction_digits = 0;
                seen_point = false;
                negative = false;
                plain = true;
            }
            _ => plain = false,
        }
        i += 1;
    }
    if field != columns {
        let count = row.iter().filter(|&&b| b == b',').count() + 1;
        return Err(CsvError {
            line,
            message: format!("{count} fields, but line {first_line} has {columns}"),
        });
    }
    Ok(())
}

/// A field's value: any finite number `str::parse` accepts, surrounding spaces allowed.
fn number(field: &str) -> Option<f64> {
    field.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_same_bits_as_str_parse() {
        // Random plain decimals of 1 to 16 digits (the fast path takes up to 15), signed or
        // not, with the point anywhere, plus forms only str::parse handles.
        let mut state: u64 = 99;
        let mut fields = vec![" 2.5".to_string(), "1e-3".into(), "+.5".into(), "-0".into()];
        for _ in 0..200_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let digits = (state >> 60) as usize + 1;
            let point = (state >> 56 & 0xf) as usize % (digits + 1);
            let mut text = String::new();
            if state & 1 == 1 {
                text.push('-');
            }
            let mut v = state >> 8;
            for i in 0..digits {
                if i == point && i > 0 {
                    text.push('.');
                }
                text.push((b'0' + (v % 10) as u8) as char);
                v /= 10;
            }
            fields.push(text);
        }
        let csv: String = fields.iter().map(|f| format!("{f},0\n")).collect();
        let data = parse(&csv).unwrap();
        for (field, value) in fields.iter().zip(&data.x) {
            let expected: f64 = field.trim().parse().unwrap();
            assert_eq!(value.to_bits(), expected.to_bits(), "{field}");
        }
        for bad in ["1.2.3", "-", ".", "0x10", "1-2", "--1"] {
            let err = parse(&format!("1,2\n{bad},2\n")).unwrap_err();
            assert_eq!(
                err.message,
                format!("field 1 {bad:?} is not a finite number")
            );
        }
    }

    #[test]
    fn header_is_optional() {
        let data = parse("1,2\n3,4\n").unwrap();
        assert_eq!(data.names, vec!["x1", "y"]);
        assert_eq!(data.y, vec![2.0, 4.0]);
        let data = parse("\"len\",\"class\"\r\n1.5,0\r\n\r\n2.5,1\r\n").unwrap();
        assert_eq!(data.names, vec!["len", "class"]);
        assert_eq!(data.x, vec![1.5, 2.5]);
    }

    #[test]
    fn malformed_rows_name_their_line() {
        assert_eq!(
            parse("a,y\n1,2\n3\n").unwrap_err().to_string(),
            "line 3: 1 fields, but line 1 has 2"
        );
        assert_eq!(
            parse("1,2\n3,4,5\n").unwrap_err().to_string(),
            "line 2: 3 fields, but line 1 has 2"
        );
        assert_eq!(
            parse("1,2\n3,NaN\n").unwrap_err().to_string(),
            "line 2: field 2 \"NaN\" is not a finite number"
        );
        assert_eq!(parse("a,y\n").unwrap_err().to_string(), "no data rows");
        assert_eq!(parse("").unwrap_err().to_string(), "no data rows");
        assert!(parse("justone\n1\n")
            .unwrap_err()
            .message
            .contains("two columns"));
    }
}

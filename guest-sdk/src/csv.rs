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

    /// Splits the row indices into (train, test) after a shuffle seeded with `seed`: the test
    /// set is `test_fraction` of the rows, rounded (0 gives no test rows).
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
        let train = order.split_off(test_rows);
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

fn number(field: &str) -> Option<f64> {
    field.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

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
    let mut names: Option<Vec<String>> = None;
    let mut columns = 0;
    let mut first_line = 0;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let row = raw.strip_suffix('\r').unwrap_or(raw);
        if row.trim().is_empty() {
            continue;
        }
        if columns == 0 {
            columns = row.split(',').count();
            first_line = line;
            if columns < 2 {
                return Err(CsvError {
                    line,
                    message: "need at least two columns: features, then the target".into(),
                });
            }
            if row.split(',').any(|f| number(f).is_none()) {
                names = Some(
                    row.split(',')
                        .map(|f| f.trim().trim_matches('"').to_string())
                        .collect(),
                );
                continue;
            }
        }
        let mut count = 0;
        for (i, field) in row.split(',').enumerate() {
            count += 1;
            if count > columns {
                break;
            }
            let value = number(field).ok_or_else(|| CsvError {
                line,
                message: format!("field {} {:?} is not a finite number", i + 1, field.trim()),
            })?;
            if i + 1 == columns {
                y.push(value);
            } else {
                x.push(value);
            }
        }
        if count != columns {
            let count = row.split(',').count();
            return Err(CsvError {
                line,
                message: format!("{count} fields, but line {first_line} has {columns}"),
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! Numeric CSV for ML tasks: an optional header row, then rows of numbers whose last column is
//! the target. Malformed input is rejected with an error naming the line. A gap (an empty
//! field, `NA`, `N/A`, `NaN`, `null` or `?`) is read as missing, and a task says what to do with
//! gaps ([`Missing`]: refuse them, drop their rows, or fill them with the training mean).

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
    /// Where the first gap is, as (line, field), both from 1; `None` when there is none. A
    /// gap's value is NaN (a field that is a number is never NaN).
    pub first_missing: Option<(usize, usize)>,
}

/// What to do with gaps: `--missing error|drop|mean` in the examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Refuse the data, naming the first gap's line and field.
    Error,
    /// Drop every row with a gap (before the split, as pandas' `dropna` would).
    Drop,
    /// Fill a feature's gaps with that column's mean over the training rows (as
    /// scikit-learn's `SimpleImputer` fitted on them); a gap in the target is refused.
    Mean,
}

impl std::str::FromStr for Missing {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "error" => Ok(Missing::Error),
            "drop" => Ok(Missing::Drop),
            "mean" => Ok(Missing::Mean),
            other => Err(format!("{other:?} is not one of error, drop, mean")),
        }
    }
}

/// The class index of each target, which must be a whole number from 0 (below a million):
/// for classifiers, whose last column names a class.
///
/// ```
/// use corral_guest::csv::class_labels;
/// assert_eq!(class_labels(&[0.0, 2.0, 1.0]).unwrap(), [0, 2, 1]);
/// assert!(class_labels(&[0.0, 1.5]).unwrap_err().contains("data row 2"));
/// assert!(class_labels(&[-1.0]).is_err());
/// ```
pub fn class_labels(y: &[f64]) -> Result<Vec<usize>, String> {
    y.iter()
        .enumerate()
        .map(|(i, &v)| {
            if v >= 0.0 && v.fract() == 0.0 && v < 1e6 {
                Ok(v as usize)
            } else {
                Err(format!(
                    "target {v} of data row {} (counting the rows kept) is not a class index \
                     0, 1, 2...",
                    i + 1
                ))
            }
        })
        .collect()
}

/// Whether a field is a gap: empty, or a word that says so.
fn is_missing(field: &str) -> bool {
    let field = field.trim();
    field.is_empty()
        || ["na", "n/a", "nan", "null", "?"]
            .iter()
            .any(|w| field.eq_ignore_ascii_case(w))
}

impl Dataset {
    /// Number of rows.
    #[inline]
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// The features of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.features..(i + 1) * self.features]
    }

    /// Applies `policy` to the gaps before the split: refuses them ([`Missing::Error`], naming
    /// the first), drops their rows ([`Missing::Drop`]), or for [`Missing::Mean`] refuses a
    /// gap in the target and leaves the features' for [`Dataset::fill_means`].
    ///
    /// ```
    /// use corral_guest::csv::{parse, Missing};
    /// let mut data = parse("a,y\n1,0\n,1\n3,NA\n5,1\n").unwrap();
    /// let e = data.clone().handle_missing(Missing::Error).unwrap_err();
    /// assert!(e.contains("line 3, field 1"), "{e}");
    /// let mut kept = data.clone();
    /// kept.handle_missing(Missing::Drop).unwrap();
    /// assert_eq!((kept.x, kept.y), (vec![1.0, 5.0], vec![0.0, 1.0]));
    /// assert!(data.handle_missing(Missing::Mean).unwrap_err().contains("target"));
    /// ```
    pub fn handle_missing(&mut self, policy: Missing) -> Result<(), String> {
        let (line, field) = match self.first_missing {
            None => return Ok(()),
            Some(at) => at,
        };
        match policy {
            Missing::Error => Err(format!(
                "line {line}, field {field}: a value is missing (--missing drop or mean accept \
                 gaps)"
            )),
            Missing::Mean => match self.y.iter().filter(|v| v.is_nan()).count() {
                0 => Ok(()),
                n => Err(format!(
                    "the target is missing in {n} row(s): --missing mean fills only features \
                     (--missing drop drops those rows)"
                )),
            },
            Missing::Drop => {
                let f = self.features;
                let mut kept = 0;
                for i in 0..self.rows() {
                    let complete = !self.y[i].is_nan() && !self.row(i).iter().any(|v| v.is_nan());
                    if complete {
                        self.x.copy_within(i * f..(i + 1) * f, kept * f);
                        self.y[kept] = self.y[i];
                        kept += 1;
                    }
                }
                self.x.truncate(kept * f);
                self.y.truncate(kept);
                self.first_missing = None;
                match kept {
                    0 => Err("every row has a missing value: none is left".into()),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Fills each feature's gaps with that column's mean over the rows `train` (after
    /// [`Dataset::handle_missing`] with [`Missing::Mean`], and the split). A column with no
    /// value among them is refused, by name.
    ///
    /// ```
    /// use corral_guest::csv::{parse, Missing};
    /// let mut data = parse("a,b,y\n1,,0\n3,4,1\n?,8,1\n").unwrap();
    /// data.handle_missing(Missing::Mean).unwrap();
    /// data.fill_means(&[0, 1]).unwrap();
    /// assert_eq!(data.x, [1.0, 4.0, 3.0, 4.0, 2.0, 8.0]);
    /// ```
    pub fn fill_means(&mut self, train: &[usize]) -> Result<(), String> {
        if self.first_missing.is_none() {
            return Ok(());
        }
        self.handle_missing(Missing::Mean)?;
        let f = self.features;
        let mut sums = vec![(0.0, 0usize); f];
        for &i in train {
            for (sum, &v) in sums.iter_mut().zip(self.row(i)) {
                if !v.is_nan() {
                    *sum = (sum.0 + v, sum.1 + 1);
                }
            }
        }
        for (c, &(sum, count)) in sums.iter().enumerate() {
            let gaps = self.x.iter().skip(c).step_by(f.max(1)).any(|v| v.is_nan());
            if gaps && count == 0 {
                return Err(format!(
                    "column {:?} has no value in the training rows to fill its gaps with",
                    self.names[c]
                ));
            }
            let mean = sum / count.max(1) as f64;
            for v in self.x.iter_mut().skip(c).step_by(f.max(1)) {
                if v.is_nan() {
                    *v = mean;
                }
            }
        }
        self.first_missing = None;
        Ok(())
    }

    /// The feature names (without the target's).
    pub fn feature_names(&self) -> &[String] {
        &self.names[..self.features]
    }

    /// The target column's name.
    pub fn target_name(&self) -> &str {
        &self.names[self.features]
    }

    /// Splits the row indices into (train, test) at random, exactly as scikit-learn's
    /// `train_test_split(test_size=test_fraction, random_state=seed)` does: the rows are
    /// permuted as numpy's `RandomState(seed).permutation` permutes them
    /// ([`Mt19937`](crate::rng::Mt19937)), the test set is the first `ceil(test_fraction *
    /// rows)` of the permutation and the training set the rest, both in permutation order. A
    /// fraction of 0 gives no test rows; the seed is numpy's, below 2^32.
    ///
    /// ```
    /// let data = corral_guest::csv::parse("1,0\n2,0\n3,1\n4,1\n5,1\n").unwrap();
    /// let (train, test) = data.split(0.4, 7).unwrap();
    /// assert_eq!((train.len(), test.len()), (3, 2));
    /// assert!(data.split(1.0, 7).is_err());
    /// assert!(data.split(0.4, 1 << 32).is_err());
    /// ```
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>), String> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(format!("--test-fraction {test_fraction} is outside [0, 1)"));
        }
        let seed = u32::try_from(seed).map_err(|_| {
            format!("--seed {seed} is not below 2^32 (numpy's RandomState takes 0 to 4294967295)")
        })?;
        let mut order = crate::rng::Mt19937::new(seed).permutation(self.rows());
        // As scikit-learn: ceil, in the same floating point.
        let test_rows = ((self.rows() as f64 * test_fraction).ceil() as usize).min(self.rows());
        if test_rows == self.rows() {
            return Err(format!(
                "--test-fraction {test_fraction} of {} rows leaves no training rows",
                self.rows()
            ));
        }
        let train = order.split_off(test_rows);
        order.shrink_to_fit();
        Ok((train, order))
    }

    /// The rows of [`Dataset::split`] (the same train and test sets, scikit-learn's), each in
    /// file order: for models whose result does not depend on the order of the rows (sums
    /// over them, as least squares and full-batch gradient descent take). Visiting a large
    /// data set in file order keeps memory access sequential: in permutation order, every
    /// row is a cache miss, which made a pass over a million rows twice to three times
    /// slower.
    ///
    /// ```
    /// let data = corral_guest::csv::parse("1,0\n2,0\n3,1\n4,1\n5,1\n").unwrap();
    /// let (train, test) = data.split_in_row_order(0.4, 7).unwrap();
    /// let (mut shuffled_train, _) = data.split(0.4, 7).unwrap();
    /// shuffled_train.sort_unstable();
    /// assert_eq!(train, shuffled_train);
    /// assert!(test.windows(2).all(|w| w[0] < w[1]));
    /// ```
    pub fn split_in_row_order(
        &self,
        test_fraction: f64,
        seed: u64,
    ) -> Result<(Vec<usize>, Vec<usize>), String> {
        let (train, test) = self.split(test_fraction, seed)?;
        // Marking the test rows and walking the rows once gives both sets in order without
        // sorting; both are sized up front (growing them by doubling copies them, and in
        // wasm, whose allocator cannot remap pages, every time).
        let mut is_test = vec![false; self.rows()];
        test.iter().for_each(|&i| is_test[i] = true);
        let mut in_order = (
            Vec::with_capacity(train.len()),
            Vec::with_capacity(test.len()),
        );
        for (i, &held_out) in is_test.iter().enumerate() {
            match held_out {
                true => in_order.1.push(i),
                false => in_order.0.push(i),
            }
        }
        Ok(in_order)
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

/// Parses numeric CSV. The first non-blank line is a header when any of its fields is neither
/// a number nor a gap (so a first row with a gap is data). Blank lines are skipped; `\r\n` line ends are accepted.
///
/// ```
/// let data = corral_guest::csv::parse("a,b,y\n1,2,3\n4,5,6\n").unwrap();
/// assert_eq!((data.rows(), data.features), (2, 2));
/// assert_eq!(data.row(1), &[4.0, 5.0]);
/// let err = corral_guest::csv::parse("a,b,y\n1,2,3\n4,x,6\n").unwrap_err();
/// assert_eq!(err.to_string(), "line 3: field 2 \"x\" is not a finite number");
/// ```
pub fn parse(text: &str) -> Result<Dataset, CsvError> {
    parse_bytes(text.as_bytes())
}

/// [`parse`] for bytes that have not been checked to be UTF-8, such as a file read with
/// [`crate::input::read_bytes`]: a line that is not UTF-8 is an error naming it. Cheaper than
/// checking the whole input first: a row of plain decimals is ASCII by construction, so only
/// the other lines (the header, rows with spaces or exponents) are checked, and a large data
/// set is read in one pass instead of two.
///
/// ```
/// let data = corral_guest::csv::parse_bytes(b"a,y\n1,2\n").unwrap();
/// assert_eq!(data.y, [2.0]);
/// let err = corral_guest::csv::parse_bytes(b"a,y\n1,2\n3,\xff\n").unwrap_err();
/// assert_eq!(err.to_string(), "line 3: not UTF-8 text (invalid byte at column 3)");
/// ```
pub fn parse_bytes(bytes: &[u8]) -> Result<Dataset, CsvError> {
    // One pass over the bytes with plain loops: `str::split` costs several times more per
    // field in wasm, and a CSV is mostly short fields.
    let mut names: Option<Vec<String>> = None;
    let mut columns = 0;
    let mut first_line = 0;
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut line = 0;
    let mut pos = 0;
    // Where the first data row starts, and whether `x` and `y` are sized for the whole input
    // yet (they are once a sample of rows is read).
    let mut data_start = None;
    let mut sized = false;
    let mut first_missing = None;
    while pos < bytes.len() {
        let row_start = pos;
        if columns != 0 {
            // A run of plain rows, up to the end of the sample while it is being read.
            let limit = if sized {
                usize::MAX
            } else {
                SAMPLE_ROWS - y.len()
            };
            let (next, rows) = plain_rows(bytes, pos, columns, limit, &mut x, &mut y);
            if rows > 0 {
                let start = *data_start.get_or_insert(row_start);
                line += rows;
                pos = next;
                if !sized && y.len() == SAMPLE_ROWS {
                    reserve_for_rest(&bytes[pos..], pos - start, columns, &mut x, &mut y);
                    sized = true;
                }
                continue;
            }
            // Anything else (blank lines, spaces, exponents, errors): the general path below.
        }
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
        // The plain rows above are ASCII; any other line is checked here, so that every byte
        // of the input is either ASCII or part of a checked line.
        let text = std::str::from_utf8(row).map_err(|e| CsvError {
            line,
            message: format!(
                "not UTF-8 text (invalid byte at column {})",
                e.valid_up_to() + 1
            ),
        })?;
        if columns == 0 {
            // The first row: its width, and whether it is a header (rare path, so str is fine).
            columns = text.split(',').count();
            first_line = line;
            if columns < 2 {
                return Err(CsvError {
                    line,
                    message: "need at least two columns: features, then the target".into(),
                });
            }
            if text
                .split(',')
                .any(|f| number(f).is_none() && !is_missing(f))
            {
                names = Some(
                    text.split(',')
                        .map(|f| f.trim().trim_matches('"').to_string())
                        .collect(),
                );
                continue;
            }
        }
        let start = *data_start.get_or_insert(row_start);
        parse_row(
            row,
            line,
            columns,
            first_line,
            &mut x,
            &mut y,
            &mut first_missing,
        )?;
        if !sized && y.len() == SAMPLE_ROWS {
            let rest = bytes.get(pos..).unwrap_or_default();
            reserve_for_rest(rest, pos.min(bytes.len()) - start, columns, &mut x, &mut y);
            sized = true;
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
        first_missing,
    })
}

/// Reads plain rows (see [`plain_row`]) from `pos` while they last, at most `limit` of them:
/// where it stopped, and how many rows it read. The row that stopped it, if any, is left
/// unread, for [`parse_row`].
///
/// A function of its own, so that the loop that reads a large data set is compiled apart
/// from the rest of [`parse_bytes`]: Cranelift, which compiles the wasm build, allocates
/// registers a function at a time, and among `parse_bytes`'s many live values it kept the
/// scanner's position on the stack.
#[inline(never)]
fn plain_rows(
    bytes: &[u8],
    mut pos: usize,
    columns: usize,
    limit: usize,
    x: &mut Vec<f64>,
    y: &mut Vec<f64>,
) -> (usize, usize) {
    let mut rows = 0;
    while rows < limit && pos < bytes.len() {
        let (xs, ys) = (x.len(), y.len());
        match plain_row(bytes, pos, columns, x, y) {
            Some(next) => {
                pos = next;
                rows += 1;
            }
            None => {
                x.truncate(xs);
                y.truncate(ys);
                break;
            }
        }
    }
    (pos, rows)
}

/// The common case of a data row, read straight from the text: `columns` plain decimals
/// (`-12.345`, `7`, `.5`, at most 15 digits) separated by commas, then the line's end. Pushes
/// the values and returns where the next line starts; `None` (possibly after pushing some
/// values, which the caller drops) for anything else, which [`parse_row`] then handles. Its
/// values are those of [`parse_row`]'s fast path, so the same bits as `str::parse`.
///
/// This is the scanner that reads a large data set: one pass, a tight loop per run of digits,
/// and no separate search for the line's end (each byte is looked at once, which matters
/// most in wasm, where every loop iteration also pays for fuel metering).
#[inline]
fn plain_row(
    bytes: &[u8],
    mut i: usize,
    columns: usize,
    x: &mut Vec<f64>,
    y: &mut Vec<f64>,
) -> Option<usize> {
    let digits_from = |i: &mut usize, mantissa: &mut u64| -> usize {
        let start = *i;
        // Eight bytes at a time while they last, then one at a time.
        while let Some(chunk) = bytes.get(*i..*i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let (count, value) = leading_digits(u64::from_le_bytes(word));
            *mantissa = mantissa
                .wrapping_mul(POWERS_OF_TEN_U64[count])
                .wrapping_add(value);
            *i += count;
            if count < 8 {
                return *i - start;
            }
        }
        while let Some(&b) = bytes.get(*i) {
            let digit = b.wrapping_sub(b'0');
            if digit >= 10 {
                break;
            }
            *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
            *i += 1;
        }
        *i - start
    };
    for field in 1..=columns {
        let negative = bytes.get(i) == Some(&b'-');
        if negative || bytes.get(i) == Some(&b'+') {
            i += 1;
        }
        let mut mantissa = 0u64;
        let mut digits = digits_from(&mut i, &mut mantissa);
        let mut fraction_digits = 0;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            fraction_digits = digits_from(&mut i, &mut mantissa);
            digits += fraction_digits;
        }
        if digits == 0 || digits > 15 {
            return None;
        }
        let v = mantissa as f64 / POWERS_OF_TEN[fraction_digits];
        let value = if negative { -v } else { v };
        if field < columns {
            if bytes.get(i) != Some(&b',') {
                return None;
            }
            x.push(value);
            i += 1;
        } else {
            y.push(value);
            return match bytes.get(i) {
                None => Some(i),
                Some(b'\n') => Some(i + 1),
                Some(b'\r') if i + 1 == bytes.len() => Some(i + 1),
                Some(b'\r') if bytes[i + 1] == b'\n' => Some(i + 2),
                _ => None,
            };
        }
    }
    None
}

/// Data rows read before `x` and `y` are sized for the whole input.
const SAMPLE_ROWS: usize = 64;

/// Sizes `x` and `y` for the rows still to come in `rest`, judged by the `SAMPLE_ROWS` rows
/// read so far, which took `sample_bytes`, plus an eighth for rows longer than the sample's.
/// Growing by doubling instead copies each vector several times (wasm's allocator cannot remap
/// pages as the native one does) and can leave a peak of twice the memory needed. The
/// reservation never exceeds what `rest` could hold: each value takes at least two bytes.
fn reserve_for_rest(
    rest: &[u8],
    sample_bytes: usize,
    columns: usize,
    x: &mut Vec<f64>,
    y: &mut Vec<f64>,
) {
    let per_row = (sample_bytes / SAMPLE_ROWS).max(1);
    let estimate = rest.len() / per_row;
    let rows = (estimate + estimate / 8).min(rest.len() / (2 * columns));
    x.reserve(rows * (columns - 1));
    y.reserve(rows);
}

/// 10^n for n = 0..=8.
const POWERS_OF_TEN_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of the eight bytes of `word` (read little-endian, so its first byte is the
/// lowest) are ASCII digits before the first byte that is not, and the number they spell.
/// SWAR: every byte is tested and the digits combined with a few 64-bit operations instead
/// of a loop over bytes.
#[inline]
fn leading_digits(word: u64) -> (usize, u64) {
    const LOW_NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    // Per byte: non-zero high nibble bits when the high nibble is not 3, and bit 4 set when
    // the low nibble is above 9 (adding 6 to a nibble never carries into the next byte).
    let not_three = (word & !LOW_NIBBLES) ^ 0x3030_3030_3030_3030;
    let above_nine = ((word & LOW_NIBBLES) + 0x0606_0606_0606_0606) & 0x1010_1010_1010_1010;
    let count = ((not_three | above_nine).trailing_zeros() / 8) as usize;
    if count == 0 {
        return (0, 0);
    }
    // The digits' values, moved to the top bytes so that the bytes below act as leading
    // zeros, then combined pairwise: 8 one-digit lanes, 4 two-digit, 2 four-digit, 1.
    let lanes = (word & LOW_NIBBLES) << (8 * (8 - count));
    let pairs = ((lanes & 0x0f00_0f00_0f00_0f00) >> 8) + (lanes & 0x000f_000f_000f_000f) * 10;
    let quads = ((pairs & 0x00ff_0000_00ff_0000) >> 16) + (pairs & 0x0000_00ff_0000_00ff) * 100;
    let value = ((quads & 0x0000_ffff_0000_0000) >> 32) + (quads & 0x0000_0000_0000_ffff) * 10_000;
    (count, value)
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
    first_missing: &mut Option<(usize, usize)>,
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
                    // `row` is UTF-8 (checked by the caller) cut at ASCII bytes, so is the field.
                    let text = std::str::from_utf8(&row[start..i]).unwrap_or_default();
                    match number(text) {
                        Some(v) => v,
                        None if is_missing(text) => {
                            first_missing.get_or_insert((line, field));
                            f64::NAN
                        }
                        None => {
                            return Err(CsvError {
                                line,
                                message: format!(
                                    "field {field} {:?} is not a finite number",
                                    text.trim()
                                ),
                            })
                        }
                    }
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
    fn leading_digits_reads_up_to_eight() {
        let word = |s: &[u8; 8]| u64::from_le_bytes(*s);
        assert_eq!(leading_digits(word(b"12345678")), (8, 12_345_678));
        assert_eq!(leading_digits(word(b"00000001")), (8, 1));
        assert_eq!(leading_digits(word(b"907,1.25")), (3, 907));
        assert_eq!(leading_digits(word(b"5\n1,2,3,")), (1, 5));
        assert_eq!(leading_digits(word(b",1234567")), (0, 0));
        // Bytes next to the digits in ASCII, and non-ASCII bytes, are not digits.
        for stop in [b'/', b':', b'\xb0', b'\xff', b'\x39' + 0x80, 0] {
            let mut bytes = *b"4242xxxx";
            bytes[4] = stop;
            assert_eq!(leading_digits(word(&bytes)), (4, 4242), "{stop:#x}");
        }
    }

    #[test]
    fn data_vectors_are_sized_once_from_a_sample() {
        // 10,000 rows of similar length: sized after 64 rows, never doubled.
        let mut text = String::from("a,b,c,y\n");
        for i in 0..10_000 {
            text.push_str(&format!(
                "{}.25,-{}.5,{},{}\n",
                i % 97,
                i % 89,
                i % 83,
                i % 7
            ));
        }
        let data = parse(&text).unwrap();
        assert_eq!(data.rows(), 10_000);
        assert!(
            data.y.capacity() < data.rows() * 5 / 4,
            "{}",
            data.y.capacity()
        );
        assert!(
            data.x.capacity() < data.x.len() * 5 / 4,
            "{}",
            data.x.capacity()
        );
        // Long sample rows, then short ones: more rows than estimated, still all read.
        let mut text = String::new();
        for _ in 0..SAMPLE_ROWS {
            text.push_str("1000000.000001,2000000.000002\n");
        }
        text.push_str(&"1,2\n".repeat(5_000));
        assert_eq!(parse(&text).unwrap().rows(), SAMPLE_ROWS + 5_000);
        // Short sample rows, then long ones: the reservation stays within what the rest
        // could hold, two bytes a value.
        let mut text = "1,2\n".repeat(SAMPLE_ROWS);
        text.push_str(&"1000000.000001,2000000.000002\n".repeat(100));
        let data = parse(&text).unwrap();
        assert_eq!(data.rows(), SAMPLE_ROWS + 100);
        // (100 rows of 30 bytes.)
        assert!(
            data.y.capacity() <= SAMPLE_ROWS + 100 * 30 / 4,
            "{}",
            data.y.capacity()
        );
        // Plain rows and general ones (spaces) interleaved through the sample and after it:
        // sized once all the same, every row read, and lines still counted right. (Rows of
        // one width: the estimate assumes the rest is like the sample.)
        let mut text = String::from("a,y\n");
        for i in 0..10_000 {
            if i % 7 == 3 {
                text.push_str(&format!(" {i:05} ,1\n"));
            } else {
                text.push_str(&format!("{i:05},1\n"));
            }
        }
        let data = parse(&text).unwrap();
        assert_eq!(data.rows(), 10_000);
        assert_eq!(data.x[9_999], 9_999.0);
        assert!(data.y.capacity() < 10_000 * 5 / 4, "{}", data.y.capacity());
        text.push_str("1,2,3\n");
        assert_eq!(
            parse(&text).unwrap_err().to_string(),
            "line 10002: 3 fields, but line 1 has 2"
        );
    }

    #[test]
    fn plain_rows_and_the_general_path_agree() {
        // Line ends, signs, points at either end, and rows that leave the plain path part way
        // (spaces, an exponent, 16 digits, a blank line) after pushing some of their values.
        let text = "1,-2.5,+.5\r\n3.,0,7\n 4,5,6\n7,8e1,9\n\n1234567890.123456,1,2\n-0,-.25,1\r";
        let data = parse(text).unwrap();
        assert_eq!(
            data.x,
            vec![
                1.0,
                -2.5,
                3.0,
                0.0,
                4.0,
                5.0,
                7.0,
                80.0,
                1234567890.123456,
                1.0,
                -0.0,
                -0.25
            ]
        );
        assert_eq!(data.y, vec![0.5, 7.0, 6.0, 9.0, 2.0, 1.0]);
        assert!(data.x[10].is_sign_negative());
        assert_eq!(
            parse("1,2,3\n4,5\n").unwrap_err().to_string(),
            "line 2: 2 fields, but line 1 has 3"
        );
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
    fn dropping_keeps_every_feature_of_the_complete_rows() {
        let mut data = parse("a,b,c,y\n1,2,3,0\n4,,6,1\n7,8,9,?\n10,11,12,1\n").unwrap();
        data.handle_missing(Missing::Drop).unwrap();
        assert_eq!(data.x, [1.0, 2.0, 3.0, 10.0, 11.0, 12.0]);
        assert_eq!(data.y, [0.0, 1.0]);
        assert_eq!(data.first_missing, None);
        // Filling never hides a gap in the target.
        let mut target = parse("a,y\n1,0\n2,?\n").unwrap();
        assert!(target.fill_means(&[0]).unwrap_err().contains("target"));
        // A fraction that holds out every row is refused.
        assert!(parse("1,0\n2,0\n3,0\n4,0\n5,0\n")
            .unwrap()
            .split(0.9, 1)
            .unwrap_err()
            .contains("no training rows"));
    }

    #[test]
    fn splits_are_scikit_learns() {
        // Row i holds i, so a row's index is its value.
        let rows = |n: usize| {
            let text: String = (0..n).map(|i| format!("{i},0\n")).collect();
            parse(&text).unwrap()
        };
        let ids = |data: &Dataset, set: &[usize]| -> Vec<usize> {
            set.iter().map(|&i| data.row(i)[0] as usize).collect()
        };
        // scikit-learn 1.9.1, numpy 2.4.6: train_test_split(np.arange(n), test_size=...,
        // random_state=...).
        let data = rows(150);
        let (train, test) = data.split(0.33, 7).unwrap();
        assert_eq!((train.len(), test.len()), (100, 50));
        assert_eq!(
            ids(&data, &test[..10]),
            [149, 84, 40, 66, 106, 41, 52, 94, 11, 51]
        );
        assert_eq!(ids(&data, &train[..5]), [3, 39, 117, 13, 100]);
        let data = rows(1000);
        let (train, test) = data.split(0.1, u64::from(u32::MAX)).unwrap();
        assert_eq!(test.len(), 100);
        assert_eq!(
            ids(&data, &test[..8]),
            [94, 405, 819, 632, 217, 169, 449, 275]
        );
        assert_eq!(ids(&data, &train[train.len() - 3..]), [12, 290, 419]);
        assert!(data.split(0.1, 1 << 32).unwrap_err().contains("2^32"));
        let (train, test) = data.split(0.0, 1).unwrap();
        assert_eq!((train.len(), test.len()), (1000, 0));
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
            parse("1,2\n3,inf\n").unwrap_err().to_string(),
            "line 2: field 2 \"inf\" is not a finite number"
        );
        // A gap is read as one, and where the first is is kept.
        let gaps = parse("1,2\n3,NaN\n , 4\n5,6\n").unwrap();
        assert_eq!(gaps.first_missing, Some((2, 2)));
        assert!(gaps.y[1].is_nan() && gaps.x[2].is_nan());
        assert_eq!(parse("1,2\n3,4\n").unwrap().first_missing, None);
        // Every word for a gap, in any case; a gap in the target too.
        let words = parse("1,2\nN/A,3\n4,null\nNULL,5\n na ,6\n").unwrap();
        let gaps: Vec<bool> = words.x.iter().map(|v| v.is_nan()).collect();
        assert_eq!(gaps, [false, true, false, true, true]);
        assert!(words.y[2].is_nan());
        // A first row with a gap is data, not a header.
        let first = parse("1,,2\n3,4,5\n").unwrap();
        assert_eq!((first.rows(), first.first_missing), (2, Some((1, 2))));
        assert_eq!(parse("a,y\n").unwrap_err().to_string(), "no data rows");
        assert_eq!(parse("").unwrap_err().to_string(), "no data rows");
        assert!(parse("justone\n1\n")
            .unwrap_err()
            .message
            .contains("two columns"));
    }

    #[test]
    fn bytes_that_are_not_utf8_name_their_line_wherever_they_are() {
        // In the header, after a plain start of a data row, and in a row with spaces (the
        // general path): the same check, and what is UTF-8 parses as `parse` does.
        let cases: [(&[u8], &str); 4] = [
            (
                b"a\xc3,y\n1,2\n",
                "line 1: not UTF-8 text (invalid byte at column 2)",
            ),
            (
                b"a,y\n1,2\n3,4\xe2\x82\n",
                "line 3: not UTF-8 text (invalid byte at column 4)",
            ),
            (
                b"a,y\n1,2\n 5 ,\x80\n",
                "line 3: not UTF-8 text (invalid byte at column 5)",
            ),
            (
                b"\n\xff\n",
                "line 2: not UTF-8 text (invalid byte at column 1)",
            ),
        ];
        for (bytes, message) in cases {
            assert_eq!(parse_bytes(bytes).unwrap_err().to_string(), message);
        }
        let text = "h\u{e9}ight,y\n1.5,2\n 3 ,4e0\n";
        assert_eq!(parse_bytes(text.as_bytes()), parse(text));
        assert_eq!(parse(text).unwrap().names[0], "h\u{e9}ight");
    }
}

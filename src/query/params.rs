//! Positional parameters for prepared statements.
//!
//! Drivers send `?` (JDBC, ADBC) or `$1` placeholders and bind values as an
//! Arrow batch whose columns are the parameters in order (ADBC names them
//! "0", "1", …). DataFusion only understands `$n`, so `?` is rewritten on
//! the token stream (never inside strings or quoted identifiers).

use arrow::array::RecordBatch;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Error, Result};

/// Rewrite each `?` placeholder into `$1`, `$2`, … in order.
pub fn number_placeholders(sql: &str) -> Result<String> {
    if !sql.contains('?') {
        return Ok(sql.to_string());
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Error::InvalidArgument(format!("SQL error: {e}")))?;
    let mut n = 0;
    let mut out = String::with_capacity(sql.len() + 8);
    for t in tokens {
        match t {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            other => out.push_str(&other.to_string()),
        }
    }
    Ok(out)
}

/// Parameter values of row `row` of a bound parameter batch.
pub fn row_params(batch: &RecordBatch, row: usize) -> Result<ParamValues> {
    let values = batch
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, row).map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
    Ok(ParamValues::from(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_question_marks_outside_literals() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b = '?' AND c > ?").unwrap(),
            "SELECT * FROM t WHERE a = $1 AND b = '?' AND c > $2"
        );
        assert_eq!(number_placeholders("SELECT $1").unwrap(), "SELECT $1");
    }
}

//! Packed (padding-free) rows: several sequences in one row, told apart by `position_ids` that
//! restart at 0 at each sequence (the convention transformers uses to build block-diagonal
//! attention for packed rows). Pure Rust on slices: validation and the segment of each position.

use std::fmt;

/// Why a `position_ids` / `labels` pair cannot describe packed sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentError {
    /// A row does not start a sequence.
    RowStart { row: usize, value: i64 },
    /// Inside a sequence the positions must count up by one.
    NotConsecutive { row: usize, col: usize, previous: i64, value: i64 },
    /// With the causal shift, the first label of a sequence would be predicted from the last
    /// position of the previous sequence.
    CrossesBoundary { row: usize, col: usize, label: i64 },
    /// A sequence without any response token has no average log-prob.
    NoResponse { sequence: usize, row: usize, start: usize, end: usize },
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentError::RowStart { row, value } => write!(
                f,
                "position_ids[{row}, 0] = {value}: every packed row must start a sequence at position 0"
            ),
            SegmentError::NotConsecutive { row, col, previous, value } => write!(
                f,
                "position_ids[{row}, {col}] = {value} follows {previous}: inside a packed sequence positions count up by 1, \
                 and a new sequence restarts at 0"
            ),
            SegmentError::CrossesBoundary { row, col, label } => write!(
                f,
                "labels[{row}, {col}] = {label} is the first token of a packed sequence (position_ids == 0) and would be \
                 predicted from the previous sequence's last position; it must be ignore_index (the collator masks it)"
            ),
            SegmentError::NoResponse { sequence, row, start, end } => write!(
                f,
                "packed sequence {sequence} (row {row}, positions {start}..{end}) has no response tokens (every label is \
                 ignore_index), so it has no average log-prob; drop it or use average=False"
            ),
        }
    }
}

/// The packed sequences of a `[rows, cols]` block (row-major slices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    /// The sequence (0, 1, ... in order of appearance, row by row) each position belongs to.
    pub ids: Vec<i64>,
    /// Labelled tokens of each sequence (after the shift).
    pub tokens: Vec<u64>,
}

/// Split `position_ids` into sequences and check them against `labels` (same `[rows, cols]`
/// shape). With `shift`, the label at column c is predicted from column c - 1, so the first
/// label of every sequence after a row's first must be `ignore_index`. With `require_tokens`,
/// every sequence must have a labelled token.
pub fn packed_segments(
    position_ids: &[i64],
    labels: &[i64],
    cols: usize,
    ignore_index: i64,
    shift: bool,
    require_tokens: bool,
) -> Result<Segments, SegmentError> {
    assert_eq!(position_ids.len(), labels.len(), "position_ids and labels must have the same shape");
    let mut ids = Vec::with_capacity(position_ids.len());
    let mut tokens: Vec<u64> = Vec::new();
    let mut starts: Vec<(usize, usize)> = Vec::new(); // (row, col) of each sequence's first position
    if cols == 0 {
        return Ok(Segments { ids, tokens });
    }
    for (row, (pids, labs)) in position_ids.chunks(cols).zip(labels.chunks(cols)).enumerate() {
        if pids[0] != 0 {
            return Err(SegmentError::RowStart { row, value: pids[0] });
        }
        for col in 0..cols {
            let value = pids[col];
            if value == 0 {
                if shift && col > 0 && labs[col] != ignore_index {
                    return Err(SegmentError::CrossesBoundary { row, col, label: labs[col] });
                }
                starts.push((row, col));
                tokens.push(0);
            } else if value != pids[col - 1] + 1 {
                return Err(SegmentError::NotConsecutive { row, col, previous: pids[col - 1], value });
            }
            let sequence = tokens.len() - 1;
            ids.push(sequence as i64);
            // The label at `col` is scored (from col - 1 with the shift; a row's first label never is).
            if labs[col] != ignore_index && (!shift || col > 0) {
                tokens[sequence] += 1;
            }
        }
    }
    if require_tokens {
        if let Some(sequence) = tokens.iter().position(|&n| n == 0) {
            let (row, start) = starts[sequence];
            let end = match starts.get(sequence + 1) {
                Some(&(next_row, next_col)) if next_row == row => next_col,
                _ => cols,
            };
            return Err(SegmentError::NoResponse { sequence, row, start, end });
        }
    }
    Ok(Segments { ids, tokens })
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: i64 = -100;

    #[test]
    fn sequences_in_order_of_appearance_with_their_token_counts() {
        // row 0: a (3 positions) + b (2); row 1: c (4), padding-free
        let pids = [0, 1, 2, 0, 1, 0, 1, 2, 3, 0];
        let labels = [I, 5, 6, I, 7, I, I, 8, 9, I];
        let s = packed_segments(&pids, &labels, 5, I, true, false).unwrap();
        assert_eq!(s.ids, vec![0, 0, 0, 1, 1, 2, 2, 2, 2, 3]);
        assert_eq!(s.tokens, vec![2, 1, 2, 0]);
        let err = packed_segments(&pids, &labels, 5, I, true, true).unwrap_err();
        assert_eq!(err, SegmentError::NoResponse { sequence: 3, row: 1, start: 4, end: 5 });
    }

    #[test]
    fn length_one_sequences_and_no_shift() {
        let pids = [0, 0, 0, 1];
        let labels = [3, 4, 5, 6];
        let s = packed_segments(&pids, &labels, 4, I, false, true).unwrap();
        assert_eq!(s.ids, vec![0, 1, 2, 2]);
        assert_eq!(s.tokens, vec![1, 1, 2]);
    }

    #[test]
    fn bad_position_ids_and_labels_are_named() {
        assert_eq!(
            packed_segments(&[1, 2], &[I, I], 2, I, true, false).unwrap_err(),
            SegmentError::RowStart { row: 0, value: 1 }
        );
        assert_eq!(
            packed_segments(&[0, 1, 3], &[I, I, I], 3, I, true, false).unwrap_err(),
            SegmentError::NotConsecutive { row: 0, col: 2, previous: 1, value: 3 }
        );
        assert_eq!(
            packed_segments(&[0, 1, 1], &[I, I, I], 3, I, true, false).unwrap_err(),
            SegmentError::NotConsecutive { row: 0, col: 2, previous: 1, value: 1 }
        );
        assert_eq!(
            packed_segments(&[0, 1, 0, 1], &[I, 4, 5, 6], 4, I, true, false).unwrap_err(),
            SegmentError::CrossesBoundary { row: 0, col: 2, label: 5 }
        );
        let message = SegmentError::CrossesBoundary { row: 0, col: 2, label: 5 }.to_string();
        assert!(message.contains("labels[0, 2] = 5") && message.contains("ignore_index"));
    }
}

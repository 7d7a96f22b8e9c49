//! Stop sequences, applied to the text stream whatever the backend.
//!
//! Text that might be the beginning of a stop sequence is held back until the next
//! piece shows whether it is one, so a stop sequence is never sent, even when it is
//! split across tokens.

pub struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

/// What one piece of text produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Filtered {
    /// Text safe to send now (may be empty).
    pub text: String,
    /// A stop sequence was found: nothing more is sent.
    pub stopped: bool,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> Self {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Takes the next piece of text; without stop sequences it is passed on as it is.
    pub fn push(&mut self, piece: String) -> Filtered {
        if self.stops.is_empty() {
            return Filtered {
                text: piece,
                stopped: false,
            };
        }
        self.pending.push_str(&piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let text = self.pending[..at].to_owned();
            self.pending.clear();
            return Filtered {
                text,
                stopped: true,
            };
        }
        let hold = self.held_suffix_len();
        let split = self.pending.len() - hold;
        let text = self.pending[..split].to_owned();
        self.pending.drain(..split);
        Filtered {
            text,
            stopped: false,
        }
    }

    /// Whether some text is held back (it may be the start of a stop sequence).
    pub fn is_holding(&self) -> bool {
        !self.pending.is_empty()
    }

    /// What was held back, once the text has ended without a stop sequence.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// The longest suffix of `pending` that is a proper prefix of some stop sequence,
    /// cut at a character boundary.
    fn held_suffix_len(&self) -> usize {
        let p = &self.pending;
        p.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                self.stops
                    .iter()
                    .any(|s| s.len() > p.len() - i && s.starts_with(&p[i..]))
            })
            .map(|i| p.len() - i)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let r = f.push((*p).to_owned());
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn no_stops_pass_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_split_across_pieces_is_never_sent() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(run(&["END"], &["hello E", "x"]), ("hello Ex".into(), false));
        assert_eq!(run(&["END"], &["hello EN"]), ("hello EN".into(), false));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        assert_eq!(run(&["zz", "é!"], &["aé", "!zz"]), ("a".into(), true));
        assert_eq!(run(&["éx"], &["ééé"]), ("ééé".into(), false));
    }
}

//! Exact amounts of money: integers of 10^-27 of the currency.

/// Decimal places of a [`Money`] unit: an amount is an integer number of
/// 10^-27 of the currency. A per-token price from LiteLLM has up to 24
/// places (5.0000000000000004e-08); ours are written per million tokens
/// with up to 21 places. u128 holds 3.4 × 10^11 of the currency at this
/// scale.
pub const MONEY_DIGITS: u32 = 27;

/// An amount of money, or a price per token, in 10^-27 of the currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub u128);

impl Money {
    pub const ZERO: Money = Money(0);

    /// `tokens` at this price per token; `None` past u128.
    pub fn times(self, tokens: u64) -> Option<Money> {
        self.0.checked_mul(tokens as u128).map(Money)
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    /// In the currency's unit, as a float (what Prometheus and OTLP carry):
    /// the double nearest to the exact amount, read from its exact decimal
    /// text (Rust's float parsing rounds correctly). Dividing the integer
    /// by 10^27 in floats would round twice: 0.0045 came out as
    /// 0.0045000000000000005, and the truth's own conversion of the same
    /// exact amount would disagree.
    pub fn to_f64(self) -> f64 {
        self.to_decimal().parse().unwrap_or(f64::MAX)
    }

    /// Exact decimal text in the currency's unit (`12.5`, `0.000003`),
    /// trailing zeros dropped: what checkpoints and the simulator's truth
    /// write.
    pub fn to_decimal(self) -> String {
        let unit = 10u128.pow(MONEY_DIGITS);
        let (whole, frac) = (self.0 / unit, self.0 % unit);
        if frac == 0 {
            return whole.to_string();
        }
        let f = format!("{frac:0width$}", width = MONEY_DIGITS as usize);
        format!("{whole}.{}", f.trim_end_matches('0'))
    }

    /// Read decimal text (`12`, `0.5`, `.5`, `5.`, `3e-6`,
    /// `5.0000000000000004e-08`, `1E2`) scaled by 10^`shift` first (a price
    /// per million tokens is read with shift -6), exactly; `Err` says why
    /// not (negative, not a number, more places than a unit holds, too
    /// large).
    ///
    /// The grammar is YAML 1.2's and JSON's decimal float without a sign
    /// (`+` is taken, `-` refused): `.5` and `5.` are taken because YAML
    /// reads them as numbers, so a table written that way means 0.5 and 5.
    /// No spaces, no `_` separators, no hexadecimal, no `.inf`/`.nan`.
    /// The value is read digit by digit, never through a float, so any
    /// decimal that is a whole number of units is held exactly.
    pub fn parse_decimal(text: &str, shift: i32) -> Result<Money, String> {
        let s = text.as_bytes();
        let mut i = 0;
        match s.first() {
            None => return Err("is empty: write a decimal number such as 2.5".into()),
            Some(b'-') => return Err("is negative: a price or an amount is 0 or more".into()),
            Some(b'+') => i = 1,
            _ => {}
        }
        let lower = text.to_ascii_lowercase();
        let body = lower.trim_start_matches(['+', '.']);
        if matches!(body, "nan" | "inf" | "infinity") {
            return Err("is not a finite number: write a decimal number such as 2.5".into());
        }
        let not_decimal = || {
            format!(
                "{:?} is not a decimal number: write one such as 2.5, 0.000003 or 3e-6",
                crate::text::shorten(text, 40)
            )
        };
        // Significant digits (leading zeros dropped), and how many of the
        // digits read were after the point.
        let mut digits: Vec<u8> = Vec::new();
        let mut frac_len: i64 = 0;
        let mut seen_digit = false;
        let mut seen_point = false;
        while i < s.len() {
            match s[i] {
                c @ b'0'..=b'9' => {
                    seen_digit = true;
                    if seen_point {
                        frac_len += 1;
                    }
                    if !(digits.is_empty() && c == b'0') {
                        digits.push(c - b'0');
                    }
                }
                b'.' if !seen_point => seen_point = true,
                b'e' | b'E' => break,
                _ => return Err(not_decimal()),
            }
            i += 1;
        }
        if !seen_digit {
            return Err(not_decimal());
        }
        let mut exp: i64 = 0;
        if i < s.len() {
            // The exponent: [eE][+-]?digits, saturated far past any use so
            // that a thousand digits cannot overflow it.
            i += 1;
            let negative = match s.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            if i >= s.len() {
                return Err(not_decimal());
            }
            for &c in &s[i..] {
                if !c.is_ascii_digit() {
                    return Err(not_decimal());
                }
                exp = (exp * 10 + (c - b'0') as i64).min(1_000_000_000);
            }
            if negative {
                exp = -exp;
            }
        }
        // value = digits × 10^(exp + shift - frac_len), in units of 10^-27.
        let mut scale = exp + shift as i64 - frac_len + MONEY_DIGITS as i64;
        while digits.last() == Some(&0) {
            digits.pop();
            scale += 1;
        }
        if digits.is_empty() {
            return Ok(Money::ZERO);
        }
        if scale < 0 {
            let places = MONEY_DIGITS as i64 + shift as i64;
            return Err(if shift == 0 {
                format!(
                    "has more decimal places than a money amount holds ({places}, i.e. 10^-{MONEY_DIGITS} of the currency): round it"
                )
            } else {
                format!(
                    "has more decimal places than a price holds ({places} places when written per 10^{} tokens): round it",
                    -shift
                )
            });
        }
        let too_large = || {
            format!(
                "is too large (a money amount holds at most {}): is the unit right?",
                Money(u128::MAX)
                    .to_decimal()
                    .split('.')
                    .next()
                    .unwrap_or("")
            )
        };
        if digits.len() as i64 + scale > 39 {
            return Err(too_large());
        }
        let mut v: u128 = 0;
        for d in digits {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(d as u128))
                .ok_or_else(too_large)?;
        }
        for _ in 0..scale {
            v = v.checked_mul(10).ok_or_else(too_large)?;
        }
        Ok(Money(v))
    }
}

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
    /// the whole part and the fraction converted apart, so the float is the
    /// nearest to the exact amount short of the last bit.
    pub fn to_f64(self) -> f64 {
        let unit = 10u128.pow(MONEY_DIGITS);
        (self.0 / unit) as f64 + (self.0 % unit) as f64 / unit as f64
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

    /// Read decimal text (`12`, `0.5`, `3e-6`, `5.0000000000000004e-08`)
    /// scaled by 10^`shift` first (a price per million tokens is read with
    /// shift -6), exactly; `Err` says why not (negative, not a number,
    /// more places than a unit holds, too large).
    pub fn parse_decimal(text: &str, shift: i32) -> Result<Money, String> {
        // Interim reader (the prices branch brings the full one).
        let t = text.trim();
        let (mant, exp) = match t.find(['e', 'E']) {
            Some(i) => (
                &t[..i],
                t[i + 1..]
                    .parse::<i32>()
                    .map_err(|_| "not a decimal".to_string())?,
            ),
            None => (t, 0),
        };
        let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(format!("{text:?} is not a decimal"));
        }
        let digits: String = format!("{int}{frac}");
        let scale = MONEY_DIGITS as i32 + exp + shift - frac.len() as i32;
        let mut v: u128 = 0;
        for b in digits.bytes() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add((b - b'0') as u128))
                .ok_or("too large")?;
        }
        if scale >= 0 {
            v = 10u128
                .checked_pow(scale as u32)
                .and_then(|p| v.checked_mul(p))
                .ok_or("too large")?;
        } else {
            let p = 10u128
                .checked_pow((-scale) as u32)
                .ok_or("more decimal places than a unit holds")?;
            if v % p != 0 {
                return Err("more decimal places than a unit holds".into());
            }
            v /= p;
        }
        Ok(Money(v))
    }
}

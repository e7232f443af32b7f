//! A fixed-size set of piece indices, in wire order (bit 7 of byte 0 is piece 0).

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
    count: u32,
}

impl Bitfield {
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bits: vec![0; (len as usize).div_ceil(8)],
            len,
            count: 0,
        }
    }

    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// From wire bytes; the codec has already checked length and spare bits.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            if bytes
                .get(i as usize / 8)
                .is_some_and(|byte| byte & (0x80 >> (i % 8)) != 0)
            {
                b.set(i);
            }
        }
        b
    }

    pub fn from_bools(v: &[bool]) -> Bitfield {
        let mut b = Bitfield::new(v.len() as u32);
        for (i, &x) in v.iter().enumerate() {
            if x {
                b.set(i as u32);
            }
        }
        b
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[i as usize / 8] & (0x80 >> (i % 8)) != 0
    }

    /// Sets bit `i`; returns true if it was not set before.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bits[i as usize / 8] |= 0x80 >> (i % 8);
        self.count += 1;
        true
    }

    /// Clears bit `i`; returns true if it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bits[i as usize / 8] &= !(0x80 >> (i % 8));
        self.count -= 1;
        true
    }

    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_order_and_counts() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0));
        assert!(b.set(9));
        assert!(!b.set(9));
        assert!(!b.set(10));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count(), 2);
        assert_eq!(Bitfield::from_bytes(&[0x80, 0x40], 10), b);
        assert!(Bitfield::full(10).is_full());
    }
}

//! The store's resource limiter: caps linear memory and tables, and remembers that a cap was
//! hit and how high memory went.

use wasmtime::ResourceLimiter;

/// Per-run accounting of linear memory and tables.
pub(crate) struct Limiter {
    memory_cap: usize,
    table_cap: usize,
    /// Bytes of linear memory currently allocated, summed over memories.
    memory_now: usize,
    /// Highest `memory_now` reached.
    pub(crate) peak_memory: usize,
    /// A memory or table asked for more than its cap (at instantiation or through a grow).
    pub(crate) cap_hit: bool,
}

/// Memories and tables a module may define: admission's limits.
const MAX_MEMORIES: usize = corral_admission::MAX_MEMORIES as usize;
const MAX_TABLES: usize = corral_admission::MAX_TABLES as usize;

impl Limiter {
    pub(crate) fn new(memory_cap: u64, table_cap: u32) -> Self {
        Self {
            memory_cap: usize::try_from(memory_cap).unwrap_or(usize::MAX),
            table_cap: table_cap as usize,
            memory_now: 0,
            peak_memory: 0,
            cap_hit: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_now - current.min(self.memory_now) + desired;
        if total > self.memory_cap {
            self.cap_hit = true;
            return Ok(false);
        }
        self.memory_now = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_cap {
            self.cap_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_within_the_cap_is_allowed_and_tracked() {
        let mut limiter = Limiter::new(1 << 20, 10);
        assert!(limiter.memory_growing(0, 65536, None).unwrap());
        assert!(limiter.memory_growing(65536, 1 << 20, None).unwrap());
        assert_eq!(limiter.peak_memory, 1 << 20);
        assert!(!limiter.cap_hit);
    }

    #[test]
    fn growth_past_the_cap_is_refused_and_remembered() {
        let mut limiter = Limiter::new(1 << 20, 10);
        assert!(limiter.memory_growing(0, 65536, None).unwrap());
        assert!(!limiter
            .memory_growing(65536, (1 << 20) + 65536, None)
            .unwrap());
        assert!(limiter.cap_hit);
        assert_eq!(limiter.peak_memory, 65536);
    }

    #[test]
    fn the_cap_covers_all_memories_together() {
        let mut limiter = Limiter::new(3 * 65536, 10);
        assert!(limiter.memory_growing(0, 2 * 65536, None).unwrap());
        assert!(!limiter.memory_growing(0, 2 * 65536, None).unwrap());
        assert!(limiter.cap_hit);
    }

    #[test]
    fn tables_are_capped_by_elements() {
        let mut limiter = Limiter::new(1 << 20, 10);
        assert!(limiter.table_growing(0, 10, None).unwrap());
        assert!(!limiter.table_growing(10, 11, None).unwrap());
        assert!(limiter.cap_hit);
    }
}

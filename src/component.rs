//! What sinks and sources share: a component's settings without their
//! type ([`Settings`]), held with the registry entry of the kind that read
//! them. It can be copied, compared (equal only to settings of the same
//! type), printed with its kind's tag, and downcast back to the kind's
//! typed settings; what a kind does with them (start, reload, check)
//! stays with the component (`sink`, `source`), behind its kind trait.
//!
//! Invariant: a [`Settings`] is only made by its kind
//! ([`Settings::new`] from the kind's `parse`), so downcasting it to that
//! kind's config type succeeds.

use std::any::Any;
use std::fmt;

/// A registered component kind, as far as its settings are concerned
/// (`SinkKind`, `SourceKind` extend it).
pub trait Kind: Send + Sync {
    /// The kind's tag in `Debug` output (`[channel]`, `file`).
    fn tag(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// Typed settings, seen without their type.
trait Value: Send + Sync {
    /// For downcasting.
    fn as_any(&self) -> &dyn Any;
    /// A copy.
    fn clone_box(&self) -> Box<dyn Value>;
    /// Equal settings of the same type.
    fn eq_dyn(&self, other: &dyn Value) -> bool;
    /// `Debug`.
    fn fmt_dyn(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<T: Clone + PartialEq + fmt::Debug + Send + Sync + 'static> Value for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn clone_box(&self) -> Box<dyn Value> {
        Box::new(self.clone())
    }

    fn eq_dyn(&self, other: &dyn Value) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn fmt_dyn(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One component's settings with its kind `K` (`dyn SinkKind`,
/// `dyn SourceKind`), without their type.
pub struct Settings<K: ?Sized + 'static> {
    /// The kind that read them.
    kind: &'static K,
    /// The kind's typed settings.
    value: Box<dyn Value>,
}

impl<K: ?Sized + Kind + 'static> Settings<K> {
    /// `value`, read by `kind`.
    pub fn new<T: Clone + PartialEq + fmt::Debug + Send + Sync + 'static>(kind: &'static K, value: T) -> Settings<K> {
        Settings { kind, value: Box::new(value) }
    }

    /// The kind that read them.
    pub fn kind(&self) -> &'static K {
        self.kind
    }

    /// The typed settings, if they are a `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.value.as_any().downcast_ref::<T>()
    }
}

impl<K: ?Sized + 'static> Clone for Settings<K> {
    fn clone(&self) -> Self {
        Settings { kind: self.kind, value: self.value.clone_box() }
    }
}

impl<K: ?Sized + 'static> PartialEq for Settings<K> {
    fn eq(&self, other: &Self) -> bool {
        self.value.eq_dyn(&*other.value)
    }
}

impl<K: ?Sized + Kind + 'static> fmt::Debug for Settings<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.tag(f)?;
        f.write_str(" ")?;
        self.value.fmt_dyn(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Demo(&'static str);

    impl Kind for Demo {
        fn tag(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "[{}]", self.0)
        }
    }

    static A: Demo = Demo("a");

    #[test]
    fn settings_copy_compare_print_and_downcast() {
        let s = Settings::<Demo>::new(&A, 7u32);
        let copy = s.clone();
        assert!(copy == s);
        assert!(Settings::<Demo>::new(&A, 8u32) != s);
        assert!(Settings::<Demo>::new(&A, 7u64) != s, "settings of another type are never equal");
        assert_eq!(format!("{s:?}"), "[a] 7");
        assert_eq!(copy.get::<u32>(), Some(&7));
        assert_eq!(copy.get::<u64>(), None);
        assert_eq!(copy.kind().0, "a");
    }
}

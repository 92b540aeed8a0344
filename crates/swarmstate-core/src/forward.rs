//! Forwarding [`StateStore`](crate::StateStore) methods to another store, written once: the
//! smart-pointer impls below, store wrappers that own what their store needs, and decorators
//! that override a few methods all use [`forward_state_store!`](crate::forward_state_store).

use std::sync::Arc;

use crate::StateStore;

/// Implements [`StateStore`](crate::StateStore) methods by forwarding them to another store.
///
/// Use it inside an `impl StateStore for ...` block. `|s| target` names the store to forward
/// to, with `s` bound to `&self`. Without a method list it forwards every method (the impl
/// then needs no `#[async_trait]`); with one it forwards only those, so a decorator can write
/// the others itself in an `#[async_trait]` impl.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use swarmstate_core::{Key, MemoryStore, Pattern, Result, StateStore, WatchStart, WatchStream};
///
/// /// A store that owns something its store needs (a server process, a temporary directory).
/// #[derive(Debug)]
/// struct Owning {
///     store: MemoryStore,
///     _guard: Arc<()>,
/// }
///
/// impl StateStore for Owning {
///     swarmstate_core::forward_state_store!(|s| &s.store);
/// }
///
/// /// A decorator: counts watches, forwards everything else.
/// #[derive(Debug)]
/// struct CountingWatches {
///     inner: Arc<dyn StateStore>,
///     watches: std::sync::atomic::AtomicUsize,
/// }
///
/// #[async_trait]
/// impl StateStore for CountingWatches {
///     async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
///         self.watches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.inner.watch(pattern, start).await
///     }
///     swarmstate_core::forward_state_store!(|s| &s.inner;
///         capabilities, get, put, delete, keys, txn, close);
/// }
/// ```
#[macro_export]
macro_rules! forward_state_store {
    (|$s:ident| $target:expr) => {
        $crate::forward_state_store!(|$s| $target;
            capabilities, get, put, delete, keys, watch, txn, close);
    };
    (|$s:ident| $target:expr; $($method:ident),+ $(,)?) => {
        $( $crate::__forward_state_store_method!($method, $s, $target); )+
    };
}

// The signatures are what `#[async_trait]` makes of the trait's methods, so a forwarded method
// returns the inner store's boxed future as it is: forwarding costs no extra allocation.
#[doc(hidden)]
#[macro_export]
macro_rules! __forward_state_store_method {
    (capabilities, $s:ident, $target:expr) => {
        #[inline]
        fn capabilities(&self) -> $crate::Capabilities {
            let $s = self;
            $crate::StateStore::capabilities($target)
        }
    };
    (get, $s:ident, $target:expr) => {
        #[inline]
        fn get<'life0, 'life1, 'async_trait>(
            &'life0 self,
            key: &'life1 $crate::Key,
        ) -> $crate::__private::BoxFuture<'async_trait, $crate::Result<Option<$crate::Entry>>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            let $s = self;
            $crate::StateStore::get($target, key)
        }
    };
    (put, $s:ident, $target:expr) => {
        #[inline]
        fn put<'life0, 'life1, 'async_trait>(
            &'life0 self,
            key: &'life1 $crate::Key,
            value: $crate::__private::Bytes,
            options: $crate::PutOptions,
        ) -> $crate::__private::BoxFuture<'async_trait, $crate::Result<$crate::Revision>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            let $s = self;
            $crate::StateStore::put($target, key, value, options)
        }
    };
    (delete, $s:ident, $target:expr) => {
        #[inline]
        fn delete<'life0, 'life1, 'async_trait>(
            &'life0 self,
            key: &'life1 $crate::Key,
            expected: Option<$crate::Revision>,
        ) -> $crate::__private::BoxFuture<'async_trait, $crate::Result<Option<$crate::Revision>>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            let $s = self;
            $crate::StateStore::delete($target, key, expected)
        }
    };
    (keys, $s:ident, $target:expr) => {
        #[inline]
        fn keys<'life0, 'life1, 'async_trait>(
            &'life0 self,
            pattern: &'life1 $crate::Pattern,
        ) -> $crate::__private::BoxFuture<'async_trait, $crate::Result<$crate::KeyStream>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            let $s = self;
            $crate::StateStore::keys($target, pattern)
        }
    };
    (watch, $s:ident, $target:expr) => {
        #[inline]
        fn watch<'life0, 'life1, 'async_trait>(
            &'life0 self,
            pattern: &'life1 $crate::Pattern,
            start: $crate::WatchStart,
        ) -> $crate::__private::BoxFuture<'async_trait, $crate::Result<$crate::WatchStream>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            let $s = self;
            $crate::StateStore::watch($target, pattern, start)
        }
    };
    (txn, $s:ident, $target:expr) => {
        #[inline]
        fn txn<'life0, 'async_trait>(
            &'life0 self,
            ops: Vec<$crate::TxnOp>,
        ) -> $crate::__private::BoxFuture<'async_trait, $crate::Result<Vec<$crate::TxnResult>>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            let $s = self;
            $crate::StateStore::txn($target, ops)
        }
    };
    (close, $s:ident, $target:expr) => {
        #[inline]
        fn close<'life0, 'async_trait>(
            &'life0 self,
        ) -> $crate::__private::BoxFuture<'async_trait, $crate::Result<()>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            let $s = self;
            $crate::StateStore::close($target)
        }
    };
}

impl<T: StateStore + ?Sized> StateStore for Arc<T> {
    crate::forward_state_store!(|s| &**s);
}

impl<T: StateStore + ?Sized> StateStore for Box<T> {
    crate::forward_state_store!(|s| &**s);
}

impl<T: StateStore + ?Sized> StateStore for &T {
    crate::forward_state_store!(|s| &**s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Key, MemoryStore, StateStoreExt};

    async fn write_and_read(store: impl StateStore) -> Vec<u8> {
        let key = Key::new("a").unwrap();
        store.set(&key, "v").await.unwrap();
        store.get(&key).await.unwrap().unwrap().value.to_vec()
    }

    #[tokio::test]
    async fn pointers_forward_to_the_same_store() {
        let store = MemoryStore::new();
        let key = Key::new("a").unwrap();
        assert_eq!(write_and_read(&store).await, b"v");
        let shared: Arc<dyn StateStore> = Arc::new(store.clone());
        assert_eq!(write_and_read(shared.clone()).await, b"v");
        let boxed: Box<dyn StateStore> = Box::new(store.clone());
        assert_eq!(write_and_read(boxed).await, b"v");
        assert_eq!(shared.capabilities().backend, "memory");
        // Three writes through three wrappers, one store: three revisions of one key.
        assert_eq!(store.get(&key).await.unwrap().unwrap().revision.get(), 3);
        shared.close().await.unwrap();
        assert!(matches!(store.get(&key).await, Err(crate::Error::Closed)));
    }
}

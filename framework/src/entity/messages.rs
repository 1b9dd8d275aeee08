//! An entity type's messages, declared once: `type Messages = (Add, Get);` in its
//! [`ShardedActor`] impl registers them on every node and client, and is what
//! [`Sharded::send`](crate::Sharded::send) checks at compile time.

use std::any::TypeId;

use actix::Handler;

use super::registry::{make_handle, MakeHandle};
use super::{default_wire_name, RemoteMessage, ShardedActor};

/// The messages an entity type accepts from any node: a tuple of up to 16 message types, each
/// a [`RemoteMessage`] the entity has an actix `Handler` for, or `()` for none. Set as
/// [`ShardedActor::Messages`].
///
/// It is the one place a message is declared: every node and [`Client`](crate::Client) that
/// registers the entity type registers these messages (each under its wire name: the type's
/// name without its module path, or the name given with
/// [`EntityRegistration::message_named`](crate::EntityRegistration::message_named)), and
/// [`Sharded::send`](crate::Sharded::send) accepts exactly these. A listed message without a
/// handler, and a send of a message not listed, fail to compile:
///
/// ```compile_fail
/// # use actix::prelude::*;
/// # use clusterfunk::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// struct Counter(u64);
/// impl Actor for Counter {
///     type Context = Context<Self>;
/// }
/// impl ShardedActor for Counter {
///     type Key = String;
///     type Messages = (Add,); // Reset is handled but not listed
///     fn from_key(_: &String, _: EntityInfo) -> Self {
///         Counter(0)
///     }
/// }
/// #[derive(Message, Serialize, Deserialize)]
/// #[rtype(result = "u64")]
/// struct Add(u64);
/// #[derive(Message, Serialize, Deserialize)]
/// #[rtype(result = "()")]
/// struct Reset;
/// impl Handler<Add> for Counter {
///     type Result = u64;
///     fn handle(&mut self, Add(n): Add, _: &mut Context<Self>) -> u64 {
///         self.0 += n;
///         self.0
///     }
/// }
/// impl Handler<Reset> for Counter {
///     type Result = ();
///     fn handle(&mut self, _: Reset, _: &mut Context<Self>) {
///         self.0 = 0;
///     }
/// }
/// async fn reset(counters: &Sharded<Counter>) {
///     let _ = counters.send(&"a".to_string(), Reset).await; // error: Reset is not listed
/// }
/// ```
///
/// And a listed message the entity has no handler for:
///
/// ```compile_fail
/// # use actix::prelude::*;
/// # use clusterfunk::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// struct Counter(u64);
/// impl Actor for Counter {
///     type Context = Context<Self>;
/// }
/// #[derive(Message, Serialize, Deserialize)]
/// #[rtype(result = "u64")]
/// struct Add(u64);
/// impl ShardedActor for Counter {
///     type Key = String;
///     type Messages = (Add,); // error: Counter has no Handler<Add>
///     fn from_key(_: &String, _: EntityInfo) -> Self {
///         Counter(0)
///     }
/// }
/// ```
pub trait MessageList<E: ShardedActor>: sealed::Sealed {
    /// The listed messages, in order, with what registers them.
    #[doc(hidden)]
    fn declare() -> Vec<sealed::Declared<E>>;
}

/// `M` is in the message list at position `I` (which the compiler infers: callers never name
/// it). What [`Handles`](crate::Handles) requires of an entity's
/// [`Messages`](ShardedActor::Messages).
#[diagnostic::on_unimplemented(
    message = "`{M}` is not one of the entity's messages `{Self}`",
    label = "not listed in the entity's `type Messages`",
    note = "add `{M}` to `type Messages = (..)` in the entity's `impl ShardedActor`"
)]
pub trait Lists<M, I>: sealed::Sealed {}

/// A position in a message list (the `I` of [`Lists`]).
pub struct At<const N: usize>;

mod sealed {
    use super::*;

    /// Only tuples are message lists.
    pub trait Sealed {}

    /// One listed message: its type and what makes its handler on a node.
    pub struct Declared<E: ShardedActor> {
        pub(in crate::entity) ty: TypeId,
        pub(in crate::entity) type_name: &'static str,
        pub(in crate::entity) default_name: &'static str,
        pub(in crate::entity) make: MakeHandle<E>,
    }

    impl<E: ShardedActor> Declared<E> {
        pub(super) fn of<M>() -> Declared<E>
        where
            M: RemoteMessage,
            E: Handler<M>,
        {
            Declared {
                ty: TypeId::of::<M>(),
                type_name: std::any::type_name::<M>(),
                default_name: default_wire_name::<M>(),
                make: make_handle::<E, M>,
            }
        }
    }
}

impl sealed::Sealed for () {}

impl<E: ShardedActor> MessageList<E> for () {
    fn declare() -> Vec<sealed::Declared<E>> {
        Vec::new()
    }
}

/// `MessageList` for the tuple of the given types, and `Lists<T, At<i>>` for each of them.
macro_rules! message_list {
    ($($t:ident $i:tt),+) => {
        impl<$($t),+> sealed::Sealed for ($($t,)+) {}

        impl<E, $($t),+> MessageList<E> for ($($t,)+)
        where
            E: ShardedActor $(+ Handler<$t>)+,
            $($t: RemoteMessage),+
        {
            fn declare() -> Vec<sealed::Declared<E>> {
                vec![$(sealed::Declared::of::<$t>()),+]
            }
        }

        message_list!(@at [$($t)+] $($t $i),+);
    };
    (@at $all:tt $($t:ident $i:tt),+) => {
        $(message_list!(@one $all $t $i);)+
    };
    (@one [$($all:ident)+] $t:ident $i:tt) => {
        impl<$($all),+> Lists<$t, At<$i>> for ($($all,)+) {}
    };
}

message_list!(A 0);
message_list!(A 0, B 1);
message_list!(A 0, B 1, C 2);
message_list!(A 0, B 1, C 2, D 3);
message_list!(A 0, B 1, C 2, D 3, F 4);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7, K 8);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7, K 8, L 9);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7, K 8, L 9, N 10);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7, K 8, L 9, N 10, O 11);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7, K 8, L 9, N 10, O 11, P 12);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7, K 8, L 9, N 10, O 11, P 12, Q 13);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7, K 8, L 9, N 10, O 11, P 12, Q 13, R 14);
message_list!(A 0, B 1, C 2, D 3, F 4, G 5, H 6, J 7, K 8, L 9, N 10, O 11, P 12, Q 13, R 14, S 15);

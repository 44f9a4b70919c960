//! What the request and response layers share of tower's rules.

/// The inner service a layer made ready, taken to serve one call, a clone
/// left in its place to be made ready for the next (tower's rule: only
/// the service `poll_ready` answered may take the call).
pub(super) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

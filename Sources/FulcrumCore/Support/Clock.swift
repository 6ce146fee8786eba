/// Time as the core sees it: microseconds on a monotonic scale, always passed in by the caller.
/// The engine reads its event loop's clock; tests use `ManualClock` and move time by hand.
public typealias Microseconds = Int64

extension Duration {
    /// The duration in microseconds, as `Microseconds`.
    public var inMicroseconds: Microseconds { microseconds }
}

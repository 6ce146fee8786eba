import Testing

/// Every loopback integration suite runs inside this one, one test at a time: they start real processes
/// and measure timing, so they must not compete with each other for the CPU.
@Suite(.serialized) struct Integration {}

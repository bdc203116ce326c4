// What the firmware tables (the MP table, ACPI) share: fields are little-endian, and a table's bytes,
// its checksum byte included, sum to zero modulo 256.

/// `v` as little-endian bytes.
func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

/// The byte that makes `b` sum to zero (written into a checksum field that is zero while computing).
func checksum(_ b: ArraySlice<UInt8>) -> UInt8 { UInt8(truncatingIfNeeded: 0 &- b.reduce(0) { $0 &+ Int($1) }) }

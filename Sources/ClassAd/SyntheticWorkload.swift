// Synthetic job and image ads for benchmarks and tests of the matchmaker.

/// A synthetic but realistic workload: images with OS, kernel, libraries, size and access rules; jobs
/// from 40 users asking for OS, kernel, libraries, vCPUs and memory, with Rank on both sides.
public struct SyntheticWorkload {
    var rng: UInt64
    /// The share of jobs (and images) that carry constants of their own, 0…1: 0 draws every constant
    /// from short lists, so many jobs share each clause (what autoclustering folds away); 1 gives every
    /// job its own limits, versions and names, as a site with many users and varied requests sees.
    public var distinct: Double = 0
    public init(seed: UInt64, distinct: Double = 0) {
        rng = seed &* 0x9E3779B97F4A7C15 | 1
        self.distinct = distinct
    }
    mutating func next() -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
    public mutating func pick<T>(_ a: [T]) -> T { a[Int(next() % UInt64(a.count))] }
    public mutating func int(_ lo: Int, _ hi: Int) -> Int { lo + Int(next() % UInt64(hi - lo + 1)) }

    static let oses = [("debian", ["11", "12", "13"]), ("ubuntu", ["22.04", "24.04"]), ("rocky", ["8", "9"])]
    static let kernels = ["5.10.0-30", "6.1.0-25", "6.1.0-28", "6.6.15", "6.12.4"]
    static let libs = ["mpich", "libmpich12", "openmpi", "libopenmpi3", "libfftw3", "libhdf5", "libnetcdf", "libblas3", "liblapack3", "python3"]
    static let users = (0..<40).map { "user\($0)" }
    static let groups = ["physics", "chem", "bio", "guests"]

    /// One to five libraries, as a ClassAd list's items.
    mutating func libraries() -> String {
        var l = Set<String>()
        for _ in 0..<int(1, 5) { l.insert(pick(SyntheticWorkload.libs)) }
        return l.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
    }

    /// Whether the next ad carries its own constants.
    mutating func own() -> Bool { Double(next() % 1_000_000) / 1_000_000 < distinct }

    public mutating func image(_ i: Int) -> ClassAd {
        if own() { return distinctImage(i) }
        let (os, versions) = pick(SyntheticWorkload.oses)
        let libList = libraries()
        let req = pick([
            "true",
            "TARGET.AcctGroup =!= \"guests\"",
            "member(TARGET.AcctGroup, {\"physics\", \"chem\"})",
            "regexp(\"^user[0-9]$\", TARGET.Owner)",
            "stringListMember(TARGET.Owner, \"user1,user2,user3,user4,user5,user6,user7\")",
            "TARGET.VCPUs <= 32 && TARGET.AcctGroup =!= \"guests\"",
        ])
        let text = """
            [ Name = "img\(i)"; Version = "\(int(1, 4)).\(int(0, 9))"; OS = "\(os)"; OSVersion = "\(pick(versions))"; \
            KernelVersion = "\(pick(SyntheticWorkload.kernels))"; Arch = "x86_64"; Libraries = {\(libList)}; SizeMB = \(int(20, 400)); \
            MaxVCPUs = \(pick([4, 8, 16, 32, 64])); MinMemoryMB = \(pick([128, 256, 512, 1024])); Requirements = \(req); \
            Rank = \(pick(["0", "TARGET.VCPUs", "member(TARGET.AcctGroup, {\"physics\"}) ? 10 : 0"])) ]
            """
        return try! Parser.parseClassAd(text)
    }

    public mutating func job(_ j: Int) -> ClassAd {
        if own() { return distinctJob(j) }
        let (os, versions) = pick(SyntheticWorkload.oses)
        var clauses = ["TARGET.OS == \"\(os)\"", "TARGET.MaxVCPUs >= MY.VCPUs", "TARGET.MinMemoryMB <= MY.MemoryMB"]
        if next() % 2 == 0 { clauses.append("versionGE(TARGET.OSVersion, \"\(pick(versions))\")") }
        if next() % 2 == 0 { clauses.append("versioncmp(TARGET.KernelVersion, \"\(pick(["5.10", "6.1", "6.6"]))\") >= 0") }
        for _ in 0..<int(0, 2) { clauses.append("member(\"\(pick(SyntheticWorkload.libs))\", TARGET.Libraries)") }
        if next() % 4 == 0 { clauses.append("regexp(\"^img[0-9]*[02468]$\", TARGET.Name)") }
        if next() % 5 == 0 { clauses.append("stringListMember(TARGET.Arch, \"x86_64,aarch64\")") }
        let text = """
            [ Owner = "\(pick(SyntheticWorkload.users))"; AcctGroup = "\(pick(SyntheticWorkload.groups))"; VCPUs = \(pick([1, 2, 4, 8, 16])); \
            MemoryMB = \(pick([512, 1024, 2048, 4096])); ClusterId = \(j); \
            Requirements = \(clauses.joined(separator: " && ")); \
            Rank = \(pick(["-TARGET.SizeMB", "0", "TARGET.MaxVCPUs", "versioncmp(TARGET.KernelVersion, \"6.1\") > 0 ? 10 : 0"])) ]
            """
        return try! Parser.parseClassAd(text)
    }

    /// An image whose rules name its own limits: a minimum memory, a largest job, an owner prefix.
    mutating func distinctImage(_ i: Int) -> ClassAd {
        let (os, versions) = pick(SyntheticWorkload.oses)
        let libList = libraries()
        let req = pick([
            "TARGET.MemoryMB >= \(int(128, 2048))",
            "TARGET.VCPUs <= \(int(2, 64)) && TARGET.AcctGroup =!= \"guests\"",
            "TARGET.ClusterId % \(int(2, 9)) != \(int(0, 1))",
            "regexp(\"^user\(int(0, 39))\", TARGET.Owner) || TARGET.MemoryMB > \(int(256, 4096))",
        ])
        let text = """
            [ Name = "img\(i)"; Version = "\(int(1, 9)).\(int(0, 99)).\(int(0, 999))"; OS = "\(os)"; OSVersion = "\(pick(versions))"; \
            KernelVersion = "\(int(5, 6)).\(int(0, 15)).\(int(0, 60))"; Arch = "x86_64"; Libraries = {\(libList)}; SizeMB = \(int(20, 400)); \
            MaxVCPUs = \(int(2, 64)); MinMemoryMB = \(int(64, 1024)); Requirements = \(req); \
            Rank = \(pick(["0", "TARGET.VCPUs", "TARGET.MemoryMB > \(int(512, 4096)) ? \(int(1, 20)) : 0"])) ]
            """
        return try! Parser.parseClassAd(text)
    }

    /// A job whose Requirements and Rank carry its own numbers and names: limits, a kernel version, a
    /// largest image, an image it avoids.
    mutating func distinctJob(_ j: Int) -> ClassAd {
        let (os, versions) = pick(SyntheticWorkload.oses)
        let vcpus = int(1, 32), mem = int(256, 8192)
        var clauses = [
            "TARGET.OS == \"\(os)\"", "TARGET.MaxVCPUs >= \(vcpus)", "TARGET.MinMemoryMB <= \(mem)",
            "TARGET.SizeMB <= \(int(100, 400))",
        ]
        if next() % 2 == 0 { clauses.append("versionGE(TARGET.OSVersion, \"\(pick(versions))\")") }
        if next() % 2 == 0 { clauses.append("versioncmp(TARGET.KernelVersion, \"\(int(5, 6)).\(int(0, 12))\") >= 0") }
        for _ in 0..<int(0, 2) { clauses.append("member(\"\(pick(SyntheticWorkload.libs))\", TARGET.Libraries)") }
        if next() % 3 == 0 { clauses.append("TARGET.Name != \"img\(int(0, 999))\"") }
        if next() % 4 == 0 { clauses.append("regexp(\"^img[0-9]*\(int(0, 9))$\", TARGET.Name) || TARGET.MaxVCPUs > \(vcpus * 2)") }
        let text = """
            [ Owner = "\(pick(SyntheticWorkload.users))"; AcctGroup = "\(pick(SyntheticWorkload.groups))"; VCPUs = \(vcpus); \
            MemoryMB = \(mem); ClusterId = \(j); \
            Requirements = \(clauses.joined(separator: " && ")); \
            Rank = \(pick(["-TARGET.SizeMB", "TARGET.MaxVCPUs - \(vcpus)", "versioncmp(TARGET.KernelVersion, \"6.\(int(0, 12))\") > 0 ? \(int(1, 50)) : 0"])) ]
            """
        return try! Parser.parseClassAd(text)
    }
}

// What a job asks Slurm for — nodes, tasks, CPUs per task, whole nodes — as far as the submitting
// command shows it. A VM request without --vm-vcpus gets its vCPU count from this shape, at
// submission, so an image that cannot hold it is ruled out there rather than in the prolog.
//
// Slurm 22.05's SPANK gives a plugin none of these values at submission (spank_get_item answers
// ESPANK_NOT_AVAIL for them in sbatch/salloc/srun), so the plugin sends the command line, the script's
// #SBATCH lines and the input environment variables, and this file reads the job-size options out of
// them the way Slurm's own parsing would: command line over environment over #SBATCH lines, options
// end at the first operand (the script or the command) or at "--".

public struct JobShape: Codable, Sendable, Equatable {
    /// -N/--nodes (the minimum of a MIN-MAX range).
    public var nodes: Int?
    /// -n/--ntasks.
    public var tasks: Int?
    /// --ntasks-per-node.
    public var tasksPerNode: Int?
    /// -c/--cpus-per-task.
    public var cpusPerTask: Int?
    /// --exclusive (whole nodes; --exclusive=user or =mcs share nodes and do not count).
    public var exclusive: Bool

    public init(nodes: Int? = nil, tasks: Int? = nil, tasksPerNode: Int? = nil, cpusPerTask: Int? = nil, exclusive: Bool = false) {
        self.nodes = nodes; self.tasks = tasks; self.tasksPerNode = tasksPerNode; self.cpusPerTask = cpusPerTask
        self.exclusive = exclusive
    }
}

/// The submitting command as the plugin saw it.
public struct SubmitCommand: Codable, Sendable, Equatable {
    /// "sbatch", "salloc" or "srun".
    public var tool: String
    /// The command line without argv[0].
    public var arguments: [String]
    /// For sbatch: the text after "#SBATCH" of each directive line of the script, in order.
    public var directives: [String]
    /// The tool's input environment variables that set job sizes (see `JobShape.environmentNames`).
    public var environment: [String: String]

    public init(tool: String, arguments: [String], directives: [String] = [], environment: [String: String] = [:]) {
        self.tool = tool; self.arguments = arguments; self.directives = directives; self.environment = environment
    }
}

extension JobShape {
    public struct Invalid: Error, CustomStringConvertible, Equatable, Sendable {
        public let option: String
        public let value: String
        public var description: String { "\(option)=\(value) is not a count this request can use" }
    }

    /// The input environment variables each tool reads for the job-size options (Slurm's man pages).
    public static let environmentNames: [String: [String: String]] = [
        "sbatch": ["SBATCH_EXCLUSIVE": "exclusive"],
        "salloc": ["SALLOC_EXCLUSIVE": "exclusive"],
        "srun": [
            "SLURM_NNODES": "nodes", "SLURM_NTASKS": "ntasks", "SLURM_NPROCS": "ntasks",
            "SLURM_NTASKS_PER_NODE": "ntasks-per-node", "SLURM_CPUS_PER_TASK": "cpus-per-task",
            "SLURM_EXCLUSIVE": "exclusive",
        ],
    ]

    /// The shape of a job as `command` asks for it.
    public static func of(_ command: SubmitCommand) throws(Invalid) -> JobShape {
        var shape = JobShape()
        // Lowest precedence first: each later source overrides what it sets.
        if command.tool == "sbatch" {
            for line in command.directives { try shape.apply(options: Self.words(line)) }
        }
        for (name, option) in (environmentNames[command.tool] ?? [:]).sorted(by: { $0.key < $1.key }) {
            guard let v = command.environment[name] else { continue }
            try shape.set(option, option == "exclusive" ? (v.isEmpty ? nil : v) : v)
        }
        try shape.apply(options: command.arguments)
        return shape
    }

    /// The long options of sbatch, salloc and srun (22.05) that take a value in the next word when
    /// written without "=": needed to skip values, so that a value is never read as an option or as
    /// the start of the command.
    static let longWithValue: Set<String> = [
        "account", "acctg-freq", "array", "batch", "bb", "bbf", "begin", "bcast", "chdir", "cluster-constraint",
        "clusters", "comment", "compress", "constraint", "container", "core-spec", "cores-per-socket", "cpu-bind",
        "cpu-freq", "cpus-per-gpu", "cpus-per-task", "deadline", "delay-boot", "dependency", "distribution",
        "epilog", "error", "exclude", "export", "export-file", "extra-node-info", "gid", "gpu-bind", "gpu-freq",
        "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "het-group", "hint",
        "input", "job-name", "jobid", "licenses", "mail-type", "mail-user", "mcs-label", "mem", "mem-bind",
        "mem-per-cpu", "mem-per-gpu", "mincpus", "mpi", "network", "nodefile", "nodelist", "nodes", "ntasks",
        "ntasks-per-core", "ntasks-per-gpu", "ntasks-per-node", "ntasks-per-socket", "open-mode", "output",
        "partition", "power", "prefer", "priority", "profile", "prolog", "qos", "relative", "reservation",
        "resv-ports", "signal", "slurmd-debug", "sockets-per-node", "switches", "task-epilog", "task-prolog",
        "thread-spec", "threads", "threads-per-core", "time", "time-min", "tmp", "tres-per-task", "uid",
        "wait", "wait-all-nodes", "wckey", "wrap",
    ]
    /// Short options that take a value (attached, or in the next word).
    static let shortWithValue: Set<Character> = [
        "A", "a", "B", "b", "C", "c", "D", "d", "e", "F", "G", "i", "J", "L", "M", "m", "N", "n", "o", "p", "q",
        "r", "S", "T", "t", "W", "w", "x",
    ]
    static let shortNames: [Character: String] = ["N": "nodes", "n": "ntasks", "c": "cpus-per-task"]
    static let ours = ["nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "exclusive"]

    mutating func apply(options words: [String]) throws(Invalid) {
        var i = 0
        while i < words.count {
            let w = words[i]
            i += 1
            if w == "--" || !w.hasPrefix("-") || w == "-" { return }  // the script or command starts here
            if w.hasPrefix("--") {
                let body = w.dropFirst(2)
                let name = String(body.prefix { $0 != "=" })
                let attached = body.contains("=") ? String(body.drop { $0 != "=" }.dropFirst()) : nil
                let resolved = Self.ours.first { $0 == name } ?? Self.uniquePrefix(name)
                if resolved == "exclusive" { try set("exclusive", attached); continue }
                var value = attached
                if value == nil, Self.longWithValue.contains(resolved ?? name), i < words.count {
                    value = words[i]; i += 1
                }
                if let r = resolved, let v = value { try set(r, v) }
                continue
            }
            // A cluster of short options: flags, then at most one that takes the rest or the next word.
            var rest = Substring(w.dropFirst())
            while let c = rest.first {
                rest = rest.dropFirst()
                guard Self.shortWithValue.contains(c) else { continue }
                var value = String(rest)
                if value.isEmpty, i < words.count { value = words[i]; i += 1 }
                if let name = Self.shortNames[c] { try set(name, value) }
                break
            }
        }
    }

    /// getopt_long accepts an unambiguous abbreviation; only ours are resolved (others are skipped).
    static func uniquePrefix(_ name: String) -> String? {
        guard name.count >= 3 else { return nil }
        let all = longWithValue.union(["exclusive"]).filter { $0.hasPrefix(name) }
        return all.count == 1 && ours.contains(all.first!) ? all.first : nil
    }

    mutating func set(_ option: String, _ value: String?) throws(Invalid) {
        func count(_ v: String?) throws(Invalid) -> Int {
            // A range MIN-MAX (-N 2-4) counts its minimum: the job may get no more.
            let head = v.map { String($0.prefix { $0 != "-" }) } ?? ""
            guard let n = Int(head), n >= 1, n <= 1 << 20 else { throw Invalid(option: "--" + option, value: v ?? "") }
            return n
        }
        switch option {
        case "nodes": nodes = try count(value)
        case "ntasks": tasks = try count(value)
        case "ntasks-per-node": tasksPerNode = try count(value)
        case "cpus-per-task": cpusPerTask = try count(value)
        // --exclusive=user, =mcs and =topo share nodes with other jobs; anything else takes them whole.
        case "exclusive": exclusive = !["user", "mcs", "topo"].contains(value ?? "")
        default: break
        }
    }

    /// Splits a directive line into words as a shell would for plain words and quotes; a "#" after a
    /// blank starts a comment.
    static func words(_ line: String) -> [String] {
        var out: [String] = [], cur = "", quote: Character? = nil, inWord = false
        for ch in line {
            if let q = quote {
                if ch == q { quote = nil } else { cur.append(ch) }
            } else if ch == "'" || ch == "\"" {
                quote = ch; inWord = true
            } else if ch == " " || ch == "\t" {
                if inWord { out.append(cur); cur = ""; inWord = false }
            } else if ch == "#" && !inWord {
                break
            } else {
                cur.append(ch); inWord = true
            }
        }
        if inWord { out.append(cur) }
        return out
    }
}

<?php
// Runs N copies of a worker command at once and reports them as one JSON line.
//
//   php driver.php --procs N [--stats redis:HOST:PORT|memcached:HOST:PORT|none]
//                  [--rss-pids PID,PID] [--sessfs-status DIR,DIR] [--final] -- WORKER COMMAND...
//
// Each worker gets "--worker=K --lat-file=FILE" appended. The driver waits until every worker
// has printed READY (their untimed preparation is done), reads the store's counters, sends GO
// to all of them, waits until every worker has printed DONE (its timed loop is over), reads the
// counters again, sends FIN (the workers then read their final counter, untimed and uncounted)
// and collects their results; it merges the per-request latencies of all workers for p50/p99.
// With --final it then runs the worker command once more with --mode=final to read the
// session counter.
//
// Store counters:
//   redis      "INFO stats commandstats". cmds = sum of calls over all commands except INFO,
//              which includes the commands Redis runs inside Lua scripts; round trips =
//              total_reads_processed - total_connections_received (a read event per request
//              that arrives, plus one per connection that closes) - the INFO itself.
//   memcached  "stats": cmd_get + cmd_set + cmd_touch + cmd_flush + delete/incr/decr hits and
//              misses (each is one request of the text or binary protocol).
//   sessfs     with --sessfs-status, the line "counters fuse_requests=N store_round_trips=N
//              opens=N recalls=N" of each mountpoint's .sessfs-status (cumulative per mount,
//              summed over the mounts given). Reading that file is itself a few FUSE
//              requests: it is read twice back to back before GO, and that difference (one
//              read's cost) is taken off the workload's. A binary without the line, or a
//              status file that cannot be read, gives "sessfs_counters": null with the reason
//              in "sessfs_counters_why": never a failure.

$args = $argv;
array_shift($args);
$sep = array_search('--', $args, true);
if ($sep === false) {
    fwrite(STDERR, "driver.php: usage: driver.php [options] -- worker command\n");
    exit(2);
}
$mine = array_slice($args, 0, $sep);
$cmd = array_slice($args, $sep + 1);
$procs = 1;
$stats = 'none';
$rssPids = [];
$wantFinal = false;
$statusDirs = [];
for ($k = 0; $k < count($mine); $k++) {
    switch ($mine[$k]) {
        case '--procs':
            $procs = (int)$mine[++$k];
            break;
        case '--stats':
            $stats = $mine[++$k];
            break;
        case '--rss-pids':
            $rssPids = array_values(array_filter(explode(',', $mine[++$k])));
            break;
        case '--sessfs-status':
            $statusDirs = array_values(array_filter(explode(',', $mine[++$k])));
            break;
        case '--final':
            $wantFinal = true;
            break;
        default:
            fwrite(STDERR, "driver.php: unknown option {$mine[$k]}\n");
            exit(2);
    }
}

function fail(string $why): void
{
    echo json_encode(['failed' => $why], JSON_UNESCAPED_SLASHES), "\n";
    exit(1);
}

function counters(string $stats): ?array
{
    static $conn = null;
    if ($stats === 'none') {
        return null;
    }
    [$kind, $host, $port] = explode(':', $stats, 3);
    if ($conn === null) {
        $conn = @fsockopen($host, (int)$port, $errno, $errstr, 2.0);
        if ($conn === false) {
            fail("stats: cannot connect to $kind at $host:$port: $errstr");
        }
        stream_set_timeout($conn, 5);
    }
    if ($kind === 'redis') {
        fwrite($conn, "INFO stats commandstats\r\n");
        $head = fgets($conn);
        if ($head === false || $head[0] !== '$') {
            fail('stats: unexpected INFO reply');
        }
        $len = (int)substr($head, 1);
        $body = '';
        while (strlen($body) < $len + 2) {
            $chunk = fread($conn, $len + 2 - strlen($body));
            if ($chunk === false || $chunk === '') {
                fail('stats: INFO reply cut short');
            }
            $body .= $chunk;
        }
        $c = ['cmds' => 0, 'reads' => 0, 'conns' => 0];
        foreach (explode("\r\n", $body) as $line) {
            if (preg_match('/^cmdstat_([^:]+):calls=(\d+)/', $line, $m)) {
                if ($m[1] !== 'info') {
                    $c['cmds'] += (int)$m[2];
                }
            } elseif (preg_match('/^total_reads_processed:(\d+)/', $line, $m)) {
                $c['reads'] = (int)$m[1];
            } elseif (preg_match('/^total_connections_received:(\d+)/', $line, $m)) {
                $c['conns'] = (int)$m[1];
            }
        }
        // Every INFO's own read is counted before its reply is built, so the difference of two
        // readings holds exactly one INFO (the second): the caller takes it off.
        $c['rt'] = $c['reads'] - $c['conns'];
        $c['own_rt'] = 1;
        return $c;
    }
    if ($kind === 'memcached') {
        fwrite($conn, "stats\r\n");
        $sum = 0;
        $keys = ['cmd_get', 'cmd_set', 'cmd_touch', 'cmd_flush', 'delete_hits', 'delete_misses',
            'incr_hits', 'incr_misses', 'decr_hits', 'decr_misses'];
        while (($line = fgets($conn)) !== false) {
            $line = trim($line);
            if ($line === 'END') {
                break;
            }
            $p = explode(' ', $line);
            if (count($p) === 3 && in_array($p[1], $keys, true)) {
                $sum += (int)$p[2];
            }
        }
        return ['cmds' => $sum, 'rt' => $sum, 'own_rt' => 0];
    }
    fail("stats: unknown kind $kind");
    return null;
}

const SESSFS_COUNTERS = ['fuse_requests', 'store_round_trips', 'opens', 'recalls'];

// The sum over $dirs of their "counters ..." lines, or a string saying why there is none.
function sessfsCounters(array $dirs)
{
    $sum = array_fill_keys(SESSFS_COUNTERS, 0);
    foreach ($dirs as $dir) {
        // file_get_contents, not fopen + checks: a close() error must not lose the text read.
        $text = @file_get_contents("$dir/.sessfs-status");
        if ($text === false) {
            $e = error_get_last();
            return "cannot read $dir/.sessfs-status" . ($e ? ': ' . $e['message'] : '');
        }
        if (!preg_match('/^counters((?: +[a-z_]+=\d+)+) *$/m', $text, $m)) {
            return 'no "counters" line in .sessfs-status (this sessfs does not report them)';
        }
        preg_match_all('/([a-z_]+)=(\d+)/', $m[1], $pairs, PREG_SET_ORDER);
        $got = [];
        foreach ($pairs as [, $k, $v]) {
            $got[$k] = (int)$v;
        }
        foreach (SESSFS_COUNTERS as $k) {
            if (!array_key_exists($k, $got)) {
                return "the counters line of $dir/.sessfs-status has no $k";
            }
            $sum[$k] += $got[$k];
        }
    }
    return $sum;
}

function counterDelta($a, $b): ?array
{
    if (!is_array($a) || !is_array($b)) {
        return null;
    }
    $d = [];
    foreach (SESSFS_COUNTERS as $k) {
        $d[$k] = $b[$k] - $a[$k];
    }
    return $d;
}

function rss(array $pids): ?array
{
    if (!$pids) {
        return null;
    }
    $out = [];
    foreach ($pids as $pid) {
        $s = @file_get_contents("/proc/$pid/status");
        $out[] = ($s !== false && preg_match('/^VmRSS:\s+(\d+) kB/m', $s, $m)) ? (int)$m[1] : null;
    }
    return $out;
}

$tmp = sys_get_temp_dir() . '/bench-lat-' . getmypid();
@mkdir($tmp);
$workers = [];
for ($w = 0; $w < $procs; $w++) {
    $full = array_merge($cmd, ["--worker=$w", "--lat-file=$tmp/$w"]);
    $p = proc_open($full, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => STDERR], $pipes);
    if (!is_resource($p)) {
        fail('cannot start worker ' . $w);
    }
    $workers[$w] = ['proc' => $p, 'in' => $pipes[0], 'out' => $pipes[1]];
}

// Barrier: every worker prepared.
foreach ($workers as $w => $wk) {
    $line = fgets($wk['out']);
    if ($line === false || trim($line) !== 'READY') {
        fail("worker $w did not get ready: " . trim((string)$line . stream_get_contents($wk['out'])));
    }
}
$statusCal = $statusBefore = null;
if ($statusDirs) {
    $s0 = sessfsCounters($statusDirs);
    $statusBefore = sessfsCounters($statusDirs);
    $statusCal = counterDelta($s0, $statusBefore);  // what one reading of the files costs
}
$before = counters($stats);
$t0 = hrtime(true);
foreach ($workers as $wk) {
    fwrite($wk['in'], "GO\n");
    fflush($wk['in']);
}
// Barrier: every timed loop over. Whatever a worker printed instead of DONE is its error.
$early = [];
foreach ($workers as $w => $wk) {
    $line = fgets($wk['out']);
    if ($line === false || trim($line) !== 'DONE') {
        $early[$w] = (string)$line;
    }
}
$wall = (hrtime(true) - $t0) / 1e9;
$after = counters($stats);
$statusAfter = $statusDirs ? sessfsCounters($statusDirs) : null;
foreach ($workers as $w => $wk) {
    if (!isset($early[$w])) {
        @fwrite($wk['in'], "FIN\n");
        @fflush($wk['in']);
    }
}
$results = [];
foreach ($workers as $w => $wk) {
    $text = ($early[$w] ?? '') . stream_get_contents($wk['out']);
    fclose($wk['in']);
    fclose($wk['out']);
    proc_close($wk['proc']);
    $r = null;
    foreach (explode("\n", trim((string)$text)) as $line) {
        if ($line !== '' && $line[0] === '{') {
            $r = json_decode($line, true);
        }
    }
    if (!is_array($r)) {
        fail("worker $w gave no result: " . substr(trim((string)$text), 0, 300));
    }
    $results[$w] = $r;
}

$lat = [];
foreach ($results as $w => $r) {
    $bin = @file_get_contents("$tmp/$w");
    if ($bin !== false && $bin !== '') {
        foreach (unpack('P*', $bin) as $v) {
            $lat[] = $v;
        }
    }
    @unlink("$tmp/$w");
}
@rmdir($tmp);
sort($lat);
$pct = function (float $p) use ($lat) {
    $n = count($lat);
    return $n ? $lat[(int)floor($p * ($n - 1))] / 1000.0 : null;
};

$count = 0;
$writes = 0;
$rate = 0.0;
$rates = [];
$messages = [];
$sum = ['warnings' => 0, 'failed_starts' => 0, 'lost_sessions' => 0];
foreach ($results as $r) {
    $count += $r['count'];
    $writes += $r['writes'] ?? 0;
    $wr = $r['elapsed'] > 0 ? $r['count'] / $r['elapsed'] : 0.0;
    $rates[] = round($wr, 1);
    $rate += $wr;
    foreach ($sum as $k => $_) {
        $sum[$k] += $r[$k] ?? 0;
    }
    foreach ($r['messages'] ?? [] as $m) {
        if (count($messages) < 5 && !in_array($m, $messages, true)) {
            $messages[] = $m;
        }
    }
}
$out = [
    'procs' => $procs,
    'count' => $count,
    'writes' => $writes,
    'elapsed' => max(array_column($results, 'elapsed')),
    'wall' => $wall,
    'rate' => $rate,
    'worker_rates' => $rates,
    'p50_us' => $pct(0.50),
    'p99_us' => $pct(0.99),
] + $sum + ['messages' => $messages];
if ($procs === 1 && array_key_exists('final', $results[0])) {
    $out['final'] = $results[0]['final'];
}
if ($before !== null && $after !== null && $count > 0) {
    $out['cmds_per_req'] = ($after['cmds'] - $before['cmds']) / $count;
    $out['rt_per_req'] = ($after['rt'] - $before['rt'] - $after['own_rt']) / $count;
}
if ($statusDirs) {
    $why = null;
    foreach ([$s0, $statusBefore, $statusAfter] as $c) {
        if (is_string($c)) {
            $why = $c;
            break;
        }
    }
    if ($why === null && $count > 0) {
        $d = counterDelta($statusBefore, $statusAfter);
        $out['sessfs_counters'] = [];
        foreach (SESSFS_COUNTERS as $k) {
            $out['sessfs_counters'][$k] = $d[$k] - $statusCal[$k];
            $out['sessfs_counters'][$k . '_per_req'] = ($d[$k] - $statusCal[$k]) / $count;
        }
        $out['sessfs_counters']['status_read_cost'] = $statusCal;
    } else {
        $out['sessfs_counters'] = null;
        $out['sessfs_counters_why'] = $why ?? 'no requests done';
    }
}
$out['rss_kb'] = rss($rssPids);

if ($wantFinal) {
    $full = array_merge($cmd, ['--mode=final']);
    $p = proc_open($full, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => STDERR], $pipes);
    if (is_resource($p)) {
        fclose($pipes[0]);
        $text = stream_get_contents($pipes[1]);
        fclose($pipes[1]);
        proc_close($p);
        $f = json_decode(trim((string)$text), true);
        if (is_array($f)) {
            $out['final'] = $f['final'];
            $out['final_per_path'] = $f['final_per_path'];
        }
    }
}
echo json_encode($out, JSON_UNESCAPED_SLASHES), "\n";

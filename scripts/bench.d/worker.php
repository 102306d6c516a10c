<?php
// One PHP process of a session workload: requests are session_id() + session_start() +
// session_write_close() in a loop, each timed with hrtime(). The store is whatever
// session.save_handler / session.save_path the command line set (php -d ...).
//
// Protocol with driver.php: after its untimed preparation the worker prints "READY", waits for
// a line on stdin (GO), runs, prints "DONE", waits for another line (FIN: the driver has read
// the store's counters), writes its per-request latencies (ns, pack('P*')) to --lat-file and
// prints one JSON line: count, writes (the requests that changed the session), elapsed, p50_us,
// p99_us, final (where relevant), errors.
//
// Modes:
//   one     one session, ~2 KB, a counter incremented every request
//   rotate  --sessions sessions (prefilled beforehand with mode prefill), one after another
//   read    one session; one request in ten increments, the others only read (lazy_write touches)
//   eight   like one, on the session <sid>w<worker> (eight workers run at once)
//   read8   like read, on the session <sid>w<worker> (eight workers run at once)
//   same    like one, every worker on the same session; worker 0 creates it
//   prefill create --sessions sessions for rotate (no READY, no timing)
//   final   read the counter of --sid through every path (read_and_close), no writes
//   gc      run session_gc() once and time it
// Every loop stops at --count requests or --seconds seconds, whichever comes first.

error_reporting(E_ALL);

$o = getopt('', ['mode:', 'sid:', 'count:', 'seconds:', 'payload:', 'sessions:', 'paths:',
    'worker:', 'lat-file:']);
function opt(array $o, string $k, $default = null)
{
    if (!array_key_exists($k, $o)) {
        return $default;
    }
    return is_array($o[$k]) ? end($o[$k]) : $o[$k];
}
$mode = opt($o, 'mode', 'one');
$sid = opt($o, 'sid', 'benchsid');
$count = (int)opt($o, 'count', 100000);
$seconds = (float)opt($o, 'seconds', 2.0);
$payload = (int)opt($o, 'payload', 2000);
$sessions = (int)opt($o, 'sessions', 10000);
$worker = (int)opt($o, 'worker', 0);
$latFile = opt($o, 'lat-file', '');
$paths = array_values(array_filter(explode(',', (string)opt($o, 'paths', ''))));
$npaths = count($paths);

// Warnings are counted, not printed: a failed write only warns (session_write_close() still
// returns true) and a torn read warns "Failed to decode session object".
$GLOBALS['warnings'] = 0;
$GLOBALS['messages'] = [];
set_error_handler(function (int $no, string $msg) {
    $GLOBALS['warnings']++;
    $msg = preg_replace('/\b[0-9a-zA-Z]{12,}\b/', 'ID', $msg);
    if (count($GLOBALS['messages']) < 5 && !in_array($msg, $GLOBALS['messages'], true)) {
        $GLOBALS['messages'][] = $msg;
    }
    return true;
});

$data = substr(str_repeat(hash('sha256', $sid) . ' ', 1 + intdiv($payload, 65)), 0, $payload);
$failedStarts = 0;   // session_start() returned false
$lostSessions = 0;   // session started but its data was gone: the user would be logged out

// One request: returns the time it took in ns.
function request(string $id, int $i, string $how): int
{
    global $paths, $npaths, $failedStarts, $lostSessions, $data;
    $t0 = hrtime(true);
    if ($npaths > 1) {
        session_save_path($paths[$i % $npaths]);
    }
    session_id($id);
    if (!session_start()) {
        $failedStarts++;
        return hrtime(true) - $t0;
    }
    if (!isset($_SESSION['d'])) {
        if ($how !== 'init') {
            $lostSessions++;
        }
        $_SESSION['d'] = $data;
        $_SESSION['n'] = $_SESSION['n'] ?? 0;
    }
    if ($how === 'init') {
        $_SESSION['n'] = 0;
    } elseif ($how === 'incr') {
        $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
    } else {
        $seen = $_SESSION['n'];
    }
    session_write_close();
    return hrtime(true) - $t0;
}

function percentile(array $sorted, float $p): float
{
    $n = count($sorted);
    if ($n === 0) {
        return 0.0;
    }
    return $sorted[(int)floor($p * ($n - 1))] / 1000.0;
}

function finalCounter(string $id): array
{
    global $paths;
    $seen = [];
    foreach ($paths ?: [null] as $p) {
        if ($p !== null) {
            session_save_path($p);
        }
        session_id($id);
        if (!session_start(['read_and_close' => true])) {
            $seen[] = null;
            continue;
        }
        $seen[] = $_SESSION['n'] ?? null;
        $_SESSION = [];
    }
    return $seen;
}

function out(array $r): void
{
    $r['warnings'] = $GLOBALS['warnings'];
    $r['messages'] = $GLOBALS['messages'];
    fwrite(STDOUT, json_encode($r, JSON_UNESCAPED_SLASHES) . "\n");
}

if ($mode === 'prefill') {
    $t0 = hrtime(true);
    for ($k = 0; $k < $sessions; $k++) {
        request($sid . 'r' . $k, $k, 'init');
    }
    out(['prefilled' => $sessions, 'elapsed' => (hrtime(true) - $t0) / 1e9,
        'failed_starts' => $failedStarts]);
    exit(0);
}
if ($mode === 'final') {
    $seen = finalCounter($sid);
    out(['final' => $seen[0], 'final_per_path' => $seen]);
    exit(0);
}
if ($mode === 'gc') {
    session_id($sid);
    session_start();
    $t0 = hrtime(true);
    $deleted = session_gc();
    $elapsed = (hrtime(true) - $t0) / 1e9;
    session_write_close();
    out(['deleted' => $deleted, 'elapsed' => $elapsed]);
    exit(0);
}

// Untimed preparation.
$target = $sid;
if ($mode === 'eight' || $mode === 'read8') {
    $target = $sid . 'w' . $worker;
}
if (in_array($mode, ['one', 'read', 'eight', 'read8'], true) || ($mode === 'same' && $worker === 0)) {
    request($target, 0, 'init');
}
$rotateBase = random_int(0, max(0, $sessions - 1));
// Errors from preparation are not the workload's.
$GLOBALS['warnings'] = 0;
$GLOBALS['messages'] = [];
$failedStarts = $lostSessions = 0;

// Straight to the descriptor: output through PHP's output layer would count as headers sent,
// after which session_save_path() refuses to change the path.
fwrite(STDOUT, "READY\n");
fflush(STDOUT);
if (fgets(STDIN) === false) {
    exit(1);
}

$lat = [];
$deadline = hrtime(true) + (int)($seconds * 1e9);
$start = hrtime(true);
$i = 0;
$writes = 0;  // requests that changed the session (the others only read it: lazy_write touches)
switch ($mode) {
    case 'one':
    case 'eight':
    case 'same':
        for (; $i < $count && hrtime(true) < $deadline; $i++) {
            $lat[] = request($target, $i, 'incr');
        }
        $writes = $i;
        break;
    case 'read':
    case 'read8':
        for (; $i < $count && hrtime(true) < $deadline; $i++) {
            $write = $i % 10 === 0;
            $lat[] = request($target, $i, $write ? 'incr' : 'read');
            $writes += $write ? 1 : 0;
        }
        break;
    case 'rotate':
        for (; $i < $count && hrtime(true) < $deadline; $i++) {
            $lat[] = request($sid . 'r' . (($rotateBase + $i) % $sessions), $i, 'incr');
        }
        $writes = $i;
        break;
    default:
        fwrite(STDERR, "worker.php: unknown mode $mode\n");
        exit(2);
}
$elapsed = (hrtime(true) - $start) / 1e9;
// The driver reads the store's counters between DONE and FIN: what follows (the final read
// of the counter) is neither timed nor counted as the workload's.
fwrite(STDOUT, "DONE\n");
fflush(STDOUT);
if (fgets(STDIN) === false) {
    exit(1);
}

if ($latFile !== '') {
    $fh = fopen($latFile, 'wb');
    foreach (array_chunk($lat, 8192) as $chunk) {
        fwrite($fh, pack('P*', ...$chunk));
    }
    fclose($fh);
}
$result = ['mode' => $mode, 'worker' => $worker, 'count' => $i, 'writes' => $writes,
    'elapsed' => $elapsed];
sort($lat);
$result['p50_us'] = percentile($lat, 0.50);
$result['p99_us'] = percentile($lat, 0.99);
$result['failed_starts'] = $failedStarts;
$result['lost_sessions'] = $lostSessions;
if (in_array($mode, ['one', 'read', 'eight', 'read8'], true)) {
    $result['final'] = finalCounter($target)[0];
}
out($result);

<?php
// One side of a lock ping-pong: both sides loop on the same session, so each acquisition
// follows the other side's release. Hand-off = time from the other side's release (written to
// a shared file outside the store, hrtime is one clock on one machine) to our acquisition.
// argv: mode (sessfs|phpredis), save_path, session id, iterations, stamp file, seconds limit
[$_, $mode, $path, $id, $n, $stamp, $limit] = $argv;
ini_set('session.use_cookies', 0);
ini_set('session.cache_limiter', '');
ini_set('session.lazy_write', 0);
if ($mode === 'phpredis') {
    ini_set('session.save_handler', 'redis');
    ini_set('redis.session.locking_enabled', 1);
    ini_set('redis.session.lock_retries', -1);     // wait as long as it takes
    ini_set('redis.session.lock_wait_time', 200);  // µs between polls (its finest useful)
} else {
    ini_set('session.save_handler', 'files');
}
session_save_path($path);
$me = getmypid();
$gaps = [];
$deadline = hrtime(true) + (int)$limit * 1000000000;
for ($i = 0; $i < (int)$n && hrtime(true) < $deadline; $i++) {
    session_id($id);
    session_start();
    $got = hrtime(true);
    $s = @file_get_contents($stamp);
    if ($s !== false && $s !== '') {
        [$who, $t] = explode(' ', $s);
        if ((int)$who !== $me) {
            $gaps[] = ($got - (int)$t) / 1000;
        }
    }
    $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
    session_write_close();
    file_put_contents($stamp, $me . ' ' . hrtime(true));
}
sort($gaps);
$c = count($gaps);
echo json_encode([
    'handoffs' => $c,
    'p50_us' => $c ? round($gaps[intdiv($c, 2)]) : null,
    'p99_us' => $c ? round($gaps[min($c - 1, intdiv($c * 99, 100))]) : null,
]), "\n";

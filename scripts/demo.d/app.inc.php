<?php
// Shared by the demo pages: which server this is, and one status line per request.
// The demo script reads these lines; a browser shows them as plain text.

declare(strict_types=1);

function server_name(): string
{
    $name = getenv('SESSFS_DEMO_SERVER');
    return ($name === false || $name === '') ? '?' : $name;
}

function status(string $event = ''): void
{
    header('Content-Type: text/plain; charset=utf-8');
    $user = $_SESSION['user'] ?? '-';
    $visits = $_SESSION['visits'] ?? 0;
    $sid = session_status() === PHP_SESSION_ACTIVE ? session_id() : '-';
    echo "server=", server_name(), " user=", $user, " visits=", $visits, " sid=", $sid;
    if ($event !== '') {
        echo " event=", $event;
    }
    echo "\n";
}

//! Turns HTTP requests, bus events and cron schedules into trigger events

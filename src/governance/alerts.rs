//! Budget alerts: POSTed as JSON to the configured webhook by a thread of their own, a few
//! tries each, so a slow receiver never holds up a request.

use super::Alert;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub fn start(webhook: String) -> (mpsc::Sender<Alert>, Option<JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel::<Alert>();
    let thread = std::thread::Builder::new()
        .name("tollgate-alerts".into())
        .spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .http_status_as_error(true)
                .build()
                .into();
            for alert in rx {
                let mut wait = Duration::from_millis(200);
                for attempt in 1..=3 {
                    match agent.post(&webhook).send_json(&alert) {
                        Ok(_) => break,
                        Err(e) => {
                            log::warn!("budget alert to {webhook} failed (try {attempt}): {e}");
                            std::thread::sleep(wait);
                            wait *= 4;
                        }
                    }
                }
            }
        })
        .map_err(|e| log::error!("cannot start the alert sender: {e}"))
        .ok();
    (tx, thread)
}

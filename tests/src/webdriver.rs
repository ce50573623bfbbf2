//! A minimal W3C WebDriver client over reqwest, for the console's browser
//! tests: Debian's `chromedriver` driving headless `chromium` (installed by
//! `scripts/setup.sh`). Only the commands the tests use.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The WebDriver key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: Child,
    /// Screenshots; files the page downloads land in `downloads/` below.
    pub shots: PathBuf,
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Browser {
    /// Start chromedriver on a free port and a headless chromium session at
    /// `width`×`height`. Screenshots go to `<target>/console-screenshots/`.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        let driver_bin = std::env::var_os("KASBAH_CHROMEDRIVER")
            .map(PathBuf::from)
            .or_else(|| which(&["chromedriver"]))
            .ok_or_else(|| {
                anyhow::anyhow!("chromedriver not found: `make setup` installs chromium-driver")
            })?;
        let chrome = std::env::var_os("KASBAH_CHROMIUM")
            .map(PathBuf::from)
            .or_else(|| which(&["chromium", "chromium-browser", "google-chrome"]))
            .ok_or_else(|| anyhow::anyhow!("chromium not found: `make setup` installs it"))?;
        let shots = crate::workspace_root().join("target/console-screenshots");
        let downloads = shots.join("downloads");
        std::fs::create_dir_all(&downloads)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Its own process group: chromium and its helpers inherit it, and
        // Drop ends the whole group even when a test fails half way.
        let driver = Command::new(driver_bin)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-crash-reporter",
                    "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
                "prefs": {"download.default_directory": downloads,
                    "download.prompt_for_download": false},
            },
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = r["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session: {r}"))?
            .to_string();
        let b = Browser {
            http,
            base,
            session,
            driver,
            shots,
        };
        // Headless chromium holds downloads as unconfirmed without this.
        b.cmd(
            "POST",
            "/chromium/send_command",
            Some(json!({"cmd": "Browser.setDownloadBehavior",
                "params": {"behavior": "allow", "downloadPath": downloads}})),
        )
        .await?;
        Ok(b)
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let r: Value = req.send().await?.json().await?;
        if let Some(err) = r["value"]["error"].as_str() {
            anyhow::bail!("webdriver {path}: {err}: {}", r["value"]["message"]);
        }
        Ok(r["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await?;
        Ok(())
    }

    pub async fn set_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await?;
        Ok(())
    }

    /// All elements matching a CSS selector (their WebDriver ids).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Wait (up to 30 s) for an element matching `css`.
    pub async fn wait(&self, css: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.find_all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() > deadline {
                let body = self.text_of("body").await.unwrap_or_default();
                let log = self.browser_log().await.unwrap_or_default();
                anyhow::bail!("timed out waiting for {css}; page says: {body}; console: {log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, el: &str) -> anyhow::Result<()> {
        self.cmd("POST", &format!("/element/{el}/click"), None)
            .await?;
        Ok(())
    }

    pub async fn clear(&self, el: &str) -> anyhow::Result<()> {
        self.cmd("POST", &format!("/element/{el}/clear"), None)
            .await?;
        Ok(())
    }

    /// Type into an element (WebDriver key codes allowed: `\u{E004}` Tab,
    /// `\u{E007}` Enter).
    pub async fn keys(&self, el: &str, text: &str) -> anyhow::Result<()> {
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .await?;
        Ok(())
    }

    /// The element that has the keyboard focus.
    pub async fn active(&self) -> anyhow::Result<String> {
        let v = self.cmd("GET", "/element/active", None).await?;
        v[ELEMENT]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("no active element"))
    }

    pub async fn text(&self, el: &str) -> anyhow::Result<String> {
        let v = self
            .cmd("GET", &format!("/element/{el}/text"), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    pub async fn text_of(&self, css: &str) -> anyhow::Result<String> {
        let el = self
            .find_all(css)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no {css}"))?;
        self.text(&el).await
    }

    pub async fn attr(&self, el: &str, name: &str) -> anyhow::Result<Option<String>> {
        let v = self
            .cmd("GET", &format!("/element/{el}/attribute/{name}"), None)
            .await?;
        Ok(v.as_str().map(String::from))
    }

    pub async fn tag(&self, el: &str) -> anyhow::Result<String> {
        let v = self
            .cmd("GET", &format!("/element/{el}/name"), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The page's console messages (chromedriver's `se/log` extension).
    pub async fn browser_log(&self) -> anyhow::Result<String> {
        let v = self
            .cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .await?;
        Ok(v.to_string())
    }

    /// Run a script in the page (WebDriver's channel, not the page's: the
    /// CSP does not apply). Tests use it only to play an attacker who
    /// tampered with the browser's storage.
    pub async fn execute(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Accept a `confirm()` dialog.
    pub async fn accept_alert(&self) -> anyhow::Result<()> {
        self.cmd("POST", "/alert/accept", None).await?;
        Ok(())
    }

    /// Save a PNG screenshot as `<shots>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        use base64::Engine as _;
        let v = self.cmd("GET", "/screenshot", None).await?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default())?;
        let p = self.shots.join(format!("{name}.png"));
        std::fs::write(&p, png)?;
        Ok(p)
    }

    pub async fn quit(self) {
        let _ = self.cmd("DELETE", "", None).await;
    }
}

impl Drop for Browser {
    /// End chromedriver's process group (chromedriver, chromium and every
    /// helper it started), then reap chromedriver.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

//! `[display]`: the dashboard shows amounts in the configured currency and locale; the ledger and
//! the API stay in integer micro-units.

mod common;

use gridex_store::testing::TestDb;
use web::settings::{DisplaySettings, Settings};

async fn index_page(settings: Settings) -> String {
    let test_db = TestDb::any();
    let app = common::start_app(settings, &test_db.db).await;
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let page = client.get(format!("{}/", app.url())).send().await.expect("index").text().await.expect("text");
    let _ = app.shutdown().await;
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_carries_the_configured_currency_and_locale() {
    let display = DisplaySettings { currency: "CHF".into(), currency_symbol: String::new(), locale: "de-CH".into() };
    let page = index_page(Settings { display, ..Settings::default() }).await;
    let expected = r#"<meta name="gridex-display" content="{&quot;currency&quot;:&quot;CHF&quot;,&quot;symbol&quot;:&quot;CHF&quot;,&quot;locale&quot;:&quot;de-CH&quot;}">"#;
    assert!(page.contains(expected), "the page does not pin the display settings: {page}");
    // The default is euros in en-US, as before the setting existed.
    let page = index_page(Settings::default()).await;
    assert!(page.contains("&quot;symbol&quot;:&quot;€&quot;") && page.contains("&quot;locale&quot;:&quot;en-US&quot;"));
}

#[test]
fn display_settings_refuse_bad_codes_markup_and_odd_locales() {
    let valid = DisplaySettings::default();
    assert!(valid.check().is_ok());
    for (currency, symbol, locale) in [
        ("eur", "", "en-US"),
        ("EURO", "", "en-US"),
        ("USD", "<script>", "en-US"),
        ("USD", "\"$", "en-US"),
        ("USD", "   ", "en-US"),
        ("USD", "dollarsss", "en-US"),
        ("USD", "$", "english"),
        ("USD", "$", "en_US"),
        ("USD", "$", ""),
    ] {
        let display =
            DisplaySettings { currency: currency.into(), currency_symbol: symbol.into(), locale: locale.into() };
        assert!(display.check().is_err(), "{currency:?} {symbol:?} {locale:?} is accepted");
        let settings = Settings { display, ..Settings::default() };
        assert!(settings.validate().is_err(), "the server would start with {currency:?} {symbol:?} {locale:?}");
    }
    let custom = DisplaySettings { currency: "PLN".into(), currency_symbol: String::new(), locale: "pl-PL".into() };
    assert_eq!((custom.check(), custom.symbol().as_str()), (Ok(()), "zł"));
    let own = DisplaySettings { currency: "XAF".into(), currency_symbol: "FCFA".into(), locale: "fr-CM".into() };
    assert_eq!((own.check(), own.symbol().as_str()), (Ok(()), "FCFA"));
}

#[test]
fn display_settings_come_from_the_environment_too() {
    let mut settings = Settings::default();
    let env = |name: &str| match name {
        "GRIDEX_DISPLAY__CURRENCY" => Some("GBP".to_owned()),
        "GRIDEX_DISPLAY__LOCALE" => Some("en-GB".to_owned()),
        _ => None,
    };
    settings.apply_env(env).expect("applied");
    assert_eq!((settings.display.currency.as_str(), settings.display.symbol().as_str()), ("GBP", "£"));
    assert_eq!(settings.display.locale, "en-GB");
}

//! Data-driven tests of the closing auction (script format in `script_tests`): the call phase, the
//! uniform-price uncross, its tie rule and self-trade prevention. Prices here are in µ/kWh on a tick of
//! 10, so the "midpoint" of two prices is rounded onto the tick grid downwards.

use super::script_tests::run;

#[test]
fn without_a_call_phase_the_uncross_finds_nothing_to_trade() {
    run("
        a#1 sell 200x10 gtc
        > accepted a#1 sell 200x10
        > rested a#1 open=10
        b#1 buy 250x4 gtc
        > accepted b#1 buy 250x4
        > trade #1 4@200 buyer=b#1 seller=a#1 aggressor=buy
        > filled b#1
        uncross
        > auction price=none volume=0 trades=0
    ");
}

#[test]
fn in_the_call_phase_orders_rest_crossed_and_trade_at_one_price() {
    // Bids 4 at 300 and 8 at 250 against 10 at 200: 10 Wh can trade at every price from 200 to 250,
    // always with 2 Wh of excess demand, so buyers press the price to the highest of them, 250. The
    // bid at 300 pays 250 like everyone else.
    run("
        call
        a#1 sell 200x10 gtc
        > accepted a#1 sell 200x10
        > rested a#1 open=10
        b#1 buy 300x4 gtc
        > accepted b#1 buy 300x4
        > rested b#1 open=4
        c#1 buy 250x8 gtc
        > accepted c#1 buy 250x8
        > rested c#1 open=8
        depth
        > bids 300x4/1 250x8/1 | asks 200x10/1
        uncross
        > trade #1 4@250 buyer=b#1 seller=a#1 aggressor=buy
        > trade #2 6@250 buyer=c#1 seller=a#1 aggressor=buy
        > filled b#1
        > filled a#1
        > auction price=250 volume=10 trades=2
        depth
        > bids 250x2/1 | asks
        close
        > expired c#1 open=2 filled=6
    ");
}

#[test]
fn a_balanced_call_clears_at_the_middle_of_the_prices_that_tie() {
    // 10 Wh at every price from 200 to 300 with no imbalance: the middle, 250.
    run("
        call
        a#1 sell 200x10 gtc
        > accepted a#1 sell 200x10
        > rested a#1 open=10
        b#1 buy 300x10 gtc
        > accepted b#1 buy 300x10
        > rested b#1 open=10
        uncross
        > trade #1 10@250 buyer=b#1 seller=a#1 aggressor=buy
        > filled b#1
        > filled a#1
        > auction price=250 volume=10 trades=1
    ");
}

#[test]
fn excess_supply_presses_the_price_to_the_lowest_that_ties() {
    // 8 Wh of bids (at 260 and 250) against 10 Wh offered at 200: 8 Wh trade at 200..=250 with 2 Wh
    // of excess supply everywhere, so the lowest, 200.
    run("
        call
        a#1 sell 200x10 gtc
        > accepted a#1 sell 200x10
        > rested a#1 open=10
        b#1 buy 260x4 gtc
        > accepted b#1 buy 260x4
        > rested b#1 open=4
        c#1 buy 250x4 gtc
        > accepted c#1 buy 250x4
        > rested c#1 open=4
        uncross
        > trade #1 4@200 buyer=b#1 seller=a#1 aggressor=sell
        > trade #2 4@200 buyer=c#1 seller=a#1 aggressor=sell
        > filled b#1
        > filled c#1
        > auction price=200 volume=8 trades=2
        depth
        > bids | asks 200x2/1
    ");
}

#[test]
fn at_the_clearing_price_the_side_in_excess_fills_oldest_first() {
    run("
        call
        a#1 sell 200x4 gtc
        > accepted a#1 sell 200x4
        > rested a#1 open=4
        b#1 sell 200x4 gtc
        > accepted b#1 sell 200x4
        > rested b#1 open=4
        c#1 buy 200x5 gtc
        > accepted c#1 buy 200x5
        > rested c#1 open=5
        uncross
        > trade #1 4@200 buyer=c#1 seller=a#1 aggressor=sell
        > trade #2 1@200 buyer=c#1 seller=b#1 aggressor=sell
        > filled c#1
        > filled a#1
        > auction price=200 volume=5 trades=2
        depth
        > bids | asks 200x3/1
    ");
}

#[test]
fn the_call_phase_refuses_ioc_and_fok_and_accepts_post_only() {
    run("
        call
        a#1 buy 200x5 ioc
        > rejected a#1 invalid_value
        a#2 buy 200x5 fok
        > rejected a#2 invalid_value
        b#1 sell 150x5 gtc
        > accepted b#1 sell 150x5
        > rested b#1 open=5
        a#3 buy 200x5 gtc post
        > accepted a#3 buy 200x5
        > rested a#3 open=5
    ");
}

#[test]
fn an_order_that_crosses_its_own_account_in_the_call_cancels_the_resting_one() {
    // Self-trade prevention as in the continuous auction ("cancel resting"), for new orders and moves,
    // so the uncross never pairs an account with itself.
    run("
        call
        a#1 sell 200x5 gtc
        > accepted a#1 sell 200x5
        > rested a#1 open=5
        b#1 sell 220x5 gtc
        > accepted b#1 sell 220x5
        > rested b#1 open=5
        a#2 buy 210x5 gtc
        > accepted a#2 buy 210x5
        > cancelled a#1 open=5 filled=0 auto
        > rested a#2 open=5
        b#2 buy 150x5 gtc
        > accepted b#2 buy 150x5
        > rested b#2 open=5
        replace b#2 230x5
        > replaced b#2 230x5 moved
        > cancelled b#1 open=5 filled=0 auto
        > rested b#2 open=5
        replace b#2 230x3
        > replaced b#2 230x3 kept
        uncross
        > auction price=none volume=0 trades=0
    ");
}

//! The pages people see in a browser: the portal at `https://<domain>/`, the
//! identity-provider choice, the sign-in refusals and failures, and the signed-out page.
//!
//! Server-rendered HTML with one small inline stylesheet and no script. Page bodies are pure
//! functions of plain view structs ([`PortalView`], [`ChoiceView`], [`SignInProblem`]) so
//! tests render them without a gateway; the functions in [`pages`] fill the views from the
//! running gateway and wrap them in responses. Every dynamic string goes through
//! [`html::escape`].

pub mod chart;
pub mod data;
pub mod html;
pub mod pages;
pub mod signin;
pub mod view;

pub use chart::DailyUsage;
pub use pages::{
    choice_page, failure_page, portal_page, portal_page_async, problem_page, sign_in_link,
    signed_out_page,
};
pub use signin::{ChoiceView, ProviderChoice, SignInProblem};
pub use view::PortalView;

//! The simulated estate: services, endpoints, plans, keys (matching the
//! lookup tables in `examples/lookups/`) and the pools calls draw from.

/// An API (service) of the simulated estate.
#[derive(Debug)]
pub struct SimService {
    /// The service key (SPKEY), `service_id` in the schema.
    pub id: &'static str,
    /// `service_name`.
    pub name: &'static str,
    /// `request_host_name` of its calls.
    pub host: &'static str,
    /// Its endpoints.
    pub endpoints: &'static [SimEndpoint],
    /// Relative share of the traffic.
    pub weight: u32,
}

/// An endpoint of a service.
#[derive(Debug)]
pub struct SimEndpoint {
    /// `service_definition_endpoint_uuid` (LE `epkey`).
    pub uuid: &'static str,
    /// `endpoint_name`.
    pub name: &'static str,
    /// The methods called on it.
    pub methods: &'static [SimMethod],
    /// Typical origin latency in milliseconds.
    pub base_ms: u32,
}

/// One method of an endpoint.
#[derive(Debug)]
pub struct SimMethod {
    /// HTTP method.
    pub http: &'static str,
    /// URI path; `{n}` is replaced by a number.
    pub path: &'static str,
    /// `api_method_name` (`-` where Local Edition has none).
    pub name: &'static str,
}

/// A plan, with the package it belongs to.
#[derive(Debug)]
pub struct SimPlan {
    /// `plan_uuid`.
    pub uuid: &'static str,
    /// `plan_name`.
    pub name: &'static str,
    /// `package_uuid`.
    pub package_uuid: &'static str,
    /// `package_name`.
    pub package_name: &'static str,
}

/// An application key.
#[derive(Debug)]
pub struct SimKey {
    /// `api_key`.
    pub key: &'static str,
    /// Index into [`PLANS`].
    pub plan: usize,
    /// Indexes into [`SERVICES`] the key calls.
    pub services: &'static [usize],
    /// (org_name, org_uuid, sub_org_name, sub_org_uuid), if any.
    pub org: Option<(&'static str, &'static str, &'static str, &'static str)>,
    /// The developer is inactive: every call gets `ERR_403_DEVELOPER_INACTIVE`.
    pub inactive: bool,
    /// Relative share of the traffic.
    pub weight: u32,
}

macro_rules! m {
    ($http:literal, $path:literal, $name:literal) => {
        SimMethod { http: $http, path: $path, name: $name }
    };
}

/// The simulated services. Keep in sync with `examples/lookups/services.csv`
/// and `endpoints.csv` (a unit test checks).
pub static SERVICES: &[SimService] = &[
    SimService {
        id: "r2xk9fy4wq8bnc7tz6dd5ev3",
        name: "Orders",
        host: "api.example.com",
        weight: 40,
        endpoints: &[
            SimEndpoint {
                uuid: "q8w4e2r6t9y3u7i1o5p0a2s4",
                name: "Orders V2",
                base_ms: 90,
                methods: &[
                    m!("GET", "/v2/orders/{n}", "getOrder"),
                    m!("GET", "/v2/orders", "listOrders"),
                    m!("POST", "/v2/orders", "createOrder"),
                    m!("DELETE", "/v2/orders/{n}", "cancelOrder"),
                ],
            },
            SimEndpoint {
                uuid: "c4v7b1n5m9k3j6h2g8f4d1s7",
                name: "Returns V2",
                base_ms: 140,
                methods: &[m!("POST", "/v2/returns", "createReturn"), m!("GET", "/v2/returns/{n}", "getReturn")],
            },
        ],
    },
    SimService {
        id: "m5n8p2q7s4t9v3w6x1y8z2a5",
        name: "PetStore",
        host: "petstore.example.com",
        weight: 30,
        endpoints: &[
            SimEndpoint {
                uuid: "6jwf2u7t74j7mmgc5dmbkjh6",
                name: "Inventory V1",
                base_ms: 60,
                methods: &[m!("GET", "/v1/store/availability/{n}", "v1 availability")],
            },
            SimEndpoint {
                uuid: "p9o8i7u6y5t4r3e2w1q0a9s8",
                name: "Pets V1",
                base_ms: 45,
                methods: &[m!("GET", "/v1/pets/{n}", "getPet"), m!("PUT", "/v1/pets/{n}", "updatePet"), m!("GET", "/v1/pets", "findPets")],
            },
        ],
    },
    SimService {
        id: "h3j6k9l2m5n8p1q4r7s0t3u6",
        name: "Weather",
        host: "weather.example.net",
        weight: 25,
        endpoints: &[
            SimEndpoint {
                uuid: "w1e2a3t4h5e6r7f8o9r0e1c2",
                name: "Forecast",
                base_ms: 180,
                methods: &[m!("GET", "/forecast/{n}", "getForecast")],
            },
            SimEndpoint { uuid: "a1l2e3r4t5s6a7l8e9r0t1s2", name: "Alerts", base_ms: 30, methods: &[m!("GET", "/alerts", "getAlerts")] },
        ],
    },
    SimService {
        id: "b2qxuqhyh652hma8jw99gx5y",
        name: "Test_API3",
        host: "tml.api.example.com",
        weight: 5,
        endpoints: &[SimEndpoint { uuid: "3dcnbsdefv9ac2zd9qd2taq4", name: "Test_EP3", base_ms: 30, methods: &[m!("GET", "/test3", "-")] }],
    },
];

/// The simulated plans. Keep in sync with `examples/lookups/plans.json`.
pub static PLANS: &[SimPlan] = &[
    SimPlan {
        uuid: "3f1a7c52-0b8e-4e55-b1b4-7b6f6f7a2c90",
        name: "Gold",
        package_uuid: "0c0e8f4a-57a5-4f43-9f0b-5c1c1e0a9d11",
        package_name: "Retail Package",
    },
    SimPlan {
        uuid: "5b9e0d3c-6a21-4f8e-9c47-2d1e8f6a0b35",
        name: "Silver",
        package_uuid: "0c0e8f4a-57a5-4f43-9f0b-5c1c1e0a9d11",
        package_name: "Retail Package",
    },
    SimPlan {
        uuid: "7daeec13-16f2-4518-ba9d-2317257012a7",
        name: "REST Access",
        package_uuid: "8c5f4216-7b4b-43b2-9e08-8613a804b69a",
        package_name: "PetStore Package",
    },
    SimPlan {
        uuid: "e2c4a6f8-1b3d-4e5f-8a7c-9d0b2e4f6a81",
        name: "Free",
        package_uuid: "a9d7c5e3-2f4b-4c6d-8e0a-1b3c5d7e9f02",
        package_name: "Weather Package",
    },
    SimPlan {
        uuid: "fc865c5f-2d78-4bc4-a0eb-ed8240e26557",
        name: "SamplePackplanA",
        package_uuid: "eebf7d77-53ed-43b2-bdbc-4d32270a6f57",
        package_name: "SamplePack",
    },
    SimPlan {
        uuid: "d670a9f7-b523-4deb-b205-66b087020f42",
        name: "Test_Plan3",
        package_uuid: "447ae50c-349e-4386-abb9-0db67a64479e",
        package_name: "Test_Pack3",
    },
];

/// The simulated application keys. Keep in sync with
/// `examples/lookups/keys.csv`.
pub static KEYS: &[SimKey] = &[
    SimKey {
        key: "k7q2mzp4rb9d3hxw8cyn5ta6",
        plan: 0,
        services: &[0, 1],
        org: Some(("Acme Retail", "org-7f3a9c21", "Web Shop", "sub-2b8d4e60")),
        inactive: false,
        weight: 30,
    },
    SimKey { key: "t6y9u2i5o8p1a4s7d0f3g6h9", plan: 1, services: &[0], org: None, inactive: false, weight: 15 },
    SimKey {
        key: "d8f3g6h9j2k5l8m1n4p7q0r3",
        plan: 2,
        services: &[1],
        org: Some(("Northwind Pets", "org-4c1e8b95", "", "")),
        inactive: false,
        weight: 20,
    },
    SimKey {
        key: "z5x8c1v4b7n0m3q6w9e2r5t8",
        plan: 3,
        services: &[2],
        org: Some(("Contoso", "org-9a2f6d13", "Field Ops", "sub-6e0c3a77")),
        inactive: false,
        weight: 20,
    },
    SimKey { key: "sample", plan: 4, services: &[0, 2], org: None, inactive: false, weight: 5 },
    SimKey { key: "test3", plan: 5, services: &[3], org: None, inactive: false, weight: 5 },
    SimKey { key: "e4r7t0y3u6i9o2p5a8s1d4f7", plan: 1, services: &[0, 1], org: None, inactive: true, weight: 2 },
];

/// Traffic manager hosts (`traffic_manager`, LE `proxy`).
pub(super) static TRAFFIC_MANAGERS: &[&str] =
    &["tm-deploy-0-5d5d885577-xsg5m", "tm-deploy-1-5d5d885577-k2l9p", "tm-deploy-2-5d5d885577-q7w3e"];

pub(super) static USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "curl/7.29.0",
    "python-requests/2.31.0",
    "okhttp/4.12.0",
    "PostmanRuntime/7.36.0",
];

pub(super) static REFERRERS: &[&str] = &["-", "-", "-", "https://shop.example.com/cart", "https://app.example.org/dashboard"];

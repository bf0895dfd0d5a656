-- Source schema of the shop catalog (catalog/shop/shop.toml), in schema `shop`: keys that are not
-- uuid. The root is keyed by a bigint identity, a brand by a varchar code, a category by an
-- integer; the link table and the variants are keyed by composite primary keys that begin with the
-- product's id, and have no id of their own. Dropped and made again, so loading it twice is the
-- same as loading it once.
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE SCHEMA shop;

-- Where a brand is from, two levels further: a country (a varchar code) in a region (a smallint).
CREATE TABLE shop.region (
    id         smallint PRIMARY KEY,
    name       text NOT NULL,
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE shop.country (
    code       varchar(2) PRIMARY KEY,
    name       text NOT NULL,
    region_id  smallint REFERENCES shop.region (id),
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE shop.brand (
    code         varchar(10) PRIMARY KEY,
    name         text,
    country_code varchar(2) REFERENCES shop.country (code) ON DELETE SET NULL,
    updated_at   timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TABLE shop.category (
    id         integer PRIMARY KEY,
    name       text,
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

-- A product that is soft-deleted (is_deleted) has no document.
CREATE TABLE shop.product (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    tags       text[],
    is_deleted boolean NOT NULL DEFAULT false,
    brand_code varchar(10) REFERENCES shop.brand (code),
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);

-- Many-to-many, keyed by its two foreign keys. Link rows are inserted and deleted, never
-- updated: created_at is their change timestamp.
CREATE TABLE shop.product_category (
    product_id  bigint REFERENCES shop.product (id) ON DELETE CASCADE,
    category_id integer REFERENCES shop.category (id) ON DELETE CASCADE,
    created_at  timestamp with time zone NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, category_id)
);

-- One-to-many: a product's variants, keyed by the product and the sku.
CREATE TABLE shop.variant (
    product_id bigint REFERENCES shop.product (id) ON DELETE CASCADE,
    sku        text,
    price      numeric(10, 2),
    in_stock   boolean NOT NULL,
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, sku)
);

-- Keyset reads of changes: (timestamp, key) of each table.
CREATE INDEX region_updated_at_id_idx ON shop.region (updated_at, id);
CREATE INDEX country_updated_at_code_idx ON shop.country (updated_at, code);
CREATE INDEX brand_updated_at_code_idx ON shop.brand (updated_at, code);
CREATE INDEX category_updated_at_id_idx ON shop.category (updated_at, id);
CREATE INDEX product_updated_at_id_idx ON shop.product (updated_at, id);
CREATE INDEX product_category_created_at_key_idx ON shop.product_category (created_at, product_id, category_id);
CREATE INDEX variant_updated_at_key_idx ON shop.variant (updated_at, product_id, sku);
-- Fan-out from a changed brand or category to its products. A product's links and variants are
-- found by the primary keys, which lead with product_id.
CREATE INDEX product_brand_code_idx ON shop.product (brand_code);
-- ... and from a changed country or region, up to its brands.
CREATE INDEX brand_country_code_idx ON shop.brand (country_code);
CREATE INDEX country_region_id_idx ON shop.country (region_id);
CREATE INDEX product_category_category_id_idx ON shop.product_category (category_id);

-- Logical replication: the default replica identity (the primary key) is enough. A deleted link
-- row or variant names its product, because product_id is part of its primary key.
